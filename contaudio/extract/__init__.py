"""Corpus scale: lengths and features for a whole manifest, resumable, in data-loader workers, one slice per rank.

``python -m contaudio extract`` and ``python -m experiments.extract`` run :func:`run_extract`;
:class:`FeatureStore` reads the features back without building the encoder.
"""

from contaudio.extract.manifests import Clip, ManifestError, read_manifest
from contaudio.extract.ranks import RankInfo, resolve_rank
from contaudio.extract.run import ExtractOptions, run_extract
from contaudio.extract.shards import OutputMismatchError, write_index
from contaudio.extract.store import FeatureDataset, FeatureStore
from contaudio.extract.verify import VerifyReport, verify_store

__all__ = [
    "Clip",
    "ExtractOptions",
    "FeatureDataset",
    "FeatureStore",
    "ManifestError",
    "OutputMismatchError",
    "RankInfo",
    "VerifyReport",
    "read_manifest",
    "resolve_rank",
    "run_extract",
    "verify_store",
    "write_index",
]
