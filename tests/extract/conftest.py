"""Fixtures of the extract tests: a small corpus on disk, the tiny card without an encoder, its features.

Every extract test runs torch on one thread: tiny models gain nothing from more, and on a busy 2-core
machine OpenMP's waiting threads make them many times slower.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.corpus import TINY_KWARGS, Corpus, write_corpus

from contaudio import ContinuousAudioIO
from contaudio.extract import ExtractOptions, RankInfo, run_extract


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def lengths_io() -> ContinuousAudioIO:
    """The tiny card without an encoder: what lengths mode uses."""
    return ContinuousAudioIO(**TINY_KWARGS, skip_init_encoder=True)


@pytest.fixture(scope="session")
def extracted(tmp_path_factory, corpus) -> Path:
    """The corpus's features on the tiny card (in the main process, small batches and shards): the output folder.

    Shared: a test that changes it works on a copy (``shutil.copytree``).
    """
    out = tmp_path_factory.mktemp("extracted") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a session fixture is set up before the module's one_torch_thread
    try:
        options = ExtractOptions(out=out, workers=0, max_frames=600, shard_mb=0.02)
        run_extract(corpus.clips(), TINY_KWARGS, options, RankInfo())
    finally:
        torch.set_num_threads(before)
    return out
