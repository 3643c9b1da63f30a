"""Lengths or features for a whole manifest (contaudio.extract), resumable: rerun the same command to go on.

python -m experiments.extract extract.input=data/train/wav.scp extract.out=feats/train encoder=qwen_omni
python -m experiments.extract extract.mode=lengths extract.input=cuts_train.jsonl.gz extract.out=lengths/train
torchrun --nproc-per-node 8 -m experiments.extract device=cuda extract.input=cuts.jsonl.gz extract.out=feats/train
python -m experiments.extract -m hydra/launcher=slurm device=cuda extract.world_size=16 'extract.rank=range(16)' \
    extract.input=cuts.jsonl.gz extract.out=feats/train          (then: python -m contaudio extract-index feats/train)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from contaudio import ContinuousAudioIO
from contaudio.extract import ExtractOptions, RankInfo, read_manifest, resolve_rank
from contaudio.extract.run import build_io, extract_opened, open_output
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import io_kwargs, run_experiment


def options(cfg: DictConfig) -> ExtractOptions:
    e = cfg.extract
    return ExtractOptions(
        out=Path(e.out), mode=e.mode, workers=e.workers, max_frames=e.max_frames, max_clips=e.max_clips,
        shard_mb=e.shard_mb, store_dtype=e.store_dtype, overwrite=e.overwrite, allow_mixed=e.allow_mixed,
        verify=e.verify, seed=cfg.seed, decode_lengths=e.decode_lengths,
        progress=e.progress, max_errors=e.max_errors, retry_failed=e.retry_failed,
    )  # fmt: skip


def rank_of(cfg: DictConfig) -> RankInfo:
    """Explicit extract.rank/world_size, else torchrun's environment; a SLURM array's index only in a single run
    (under a Hydra sweep the sweep defines the jobs: sweep extract.rank instead)."""
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return resolve_rank(os.environ, cfg.extract.rank, cfg.extract.world_size, slurm_array=not in_sweep)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Extract this job's slice; returns the record (also written as record-extract.json). The output folder is
    checked and this slice locked before the encoder is built; the lock is held until the job ends."""
    digest: list[str | None] = []

    with contextlib.ExitStack() as held:

        def make_io(cfg: DictConfig) -> ContinuousAudioIO:
            digest.append(held.enter_context(open_output(io_kwargs(cfg), options(cfg), rank_of(cfg))))
            return build_io(io_kwargs(cfg), cfg.extract.mode, rank_of(cfg))

        def body(cfg: DictConfig, io: ContinuousAudioIO):
            clips = read_manifest(
                cfg.extract.input, cfg.extract.format, cfg.extract.segments, allow_pipes=cfg.extract.allow_pipes
            )
            return extract_opened(io, clips, io_kwargs(cfg), options(cfg), rank_of(cfg), digest[0]), {}

        return run_experiment("extract", cfg, body, make_io=make_io)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
