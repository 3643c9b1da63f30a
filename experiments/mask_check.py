"""Padding-mask correctness: each clip of a padded batch vs the clip alone vs HF's own forward.

python -m experiments.mask_check encoder=qwen_omni dtype=bf16
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from contaudio import ContinuousAudioIO
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment

TINY_CLIP_FRAMES = (1, 2, 3)  # mel frames of the tiny clips mixed into every batch (0, 0 and 1 row)
MAX_EXTRA_PADDING = 50  # frames of padding past the longest clip, drawn per batch


def clip_lengths(cfg: DictConfig, rng: np.random.Generator, sample_rate: int, hop: int) -> list[list[int]]:
    """Sample counts per batch: random durations, plus 1-3 frame clips and one > 300 s clip when enabled."""
    m = cfg.mask_check
    batches = []
    for index in range(m.num_batches):
        sizes = rng.integers(1, int(m.max_duration_s * sample_rate), size=m.batch_size).tolist()
        if m.tiny_clips:
            sizes[int(rng.integers(len(sizes)))] = int(rng.choice(TINY_CLIP_FRAMES)) * hop
        if index == 0 and m.long_clip_s > 0:
            sizes.append(int(m.long_clip_s * sample_rate))
        batches.append(sizes)
    return batches


def max_error(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |ours - ref|, that divided by max |ref|) in float32; (0, 0) for empty clips."""
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = float((ours.float() - ref.float()).abs().max())
    return diff, diff / max(float(ref.float().abs().max()), torch.finfo(torch.float32).tiny)


def run(cfg: DictConfig) -> dict[str, Any]:
    def body(cfg: DictConfig, io: ContinuousAudioIO):
        rng = np.random.default_rng(cfg.seed)
        atol, rtol = cfg.dtype.mask_atol, cfg.dtype.mask_rtol
        rows = []
        batches = clip_lengths(cfg, rng, io.sample_rate, io.features.hop_length)
        for batch_index, sizes in enumerate(tqdm(batches, desc="mask_check", leave=False)):
            mels = [io.preprocess((random_clip(rng, n), io.sample_rate))[1][1] for n in sizes]
            batch, lengths = pad_mels(mels, extra=int(rng.integers(0, MAX_EXTRA_PADDING + 1)))
            with torch.inference_mode():
                batched = io.encode_batch(batch, lengths)
                reference = hf_reference(io, batch, lengths) if cfg.mask_check.reference else [None] * len(mels)
                for i, (num_samples, mel) in enumerate(zip(sizes, mels, strict=True)):
                    (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
                    abs_err, rel_err = max_error(batched[i], alone)
                    row = {
                        "batch": batch_index, "clip": i, "num_samples": num_samples, "frames": mel.shape[0],
                        "rows": batched[i].shape[0], "batched_vs_single_max_abs": abs_err,
                        "batched_vs_single_rel": rel_err,
                    }  # fmt: skip
                    bound = atol + rtol * float(alone.float().abs().max()) if alone.numel() else atol
                    passed = batched[i].shape == alone.shape and abs_err <= bound
                    if reference[i] is not None and not bool(torch.isfinite(reference[i]).all()):
                        # HF's own forward broke (e.g. CPU bf16 Conv2d on clips of a few frames): say so,
                        # do not blame the batched path for it
                        row.update(vs_hf_max_abs=None, vs_hf_rel=None, reference_finite=False)
                    elif reference[i] is not None:
                        hf_abs, hf_rel = max_error(batched[i], reference[i])
                        hf_bound = atol + rtol * float(reference[i].float().abs().max()) if alone.numel() else atol
                        row.update(vs_hf_max_abs=hf_abs, vs_hf_rel=hf_rel, reference_finite=True)
                        passed = passed and batched[i].shape == reference[i].shape and hf_abs <= hf_bound
                    rows.append({**row, "passed": passed})
        failed = [r for r in rows if not r["passed"]]
        metrics = {
            "passed": not failed,
            "clips": len(rows),
            "failed_clips": len(failed),
            "max_abs_batched_vs_single": max(r["batched_vs_single_max_abs"] for r in rows),
            "max_rel_batched_vs_single": max(r["batched_vs_single_rel"] for r in rows),
            "tolerance": {"atol": atol, "rtol": rtol},
            "first_failures": failed[:5],
        }
        if cfg.mask_check.reference:
            compared = [r for r in rows if r["reference_finite"]]
            metrics.update(
                max_abs_vs_hf=max((r["vs_hf_max_abs"] for r in compared), default=None),
                max_rel_vs_hf=max((r["vs_hf_rel"] for r in compared), default=None),
                reference_nonfinite_clips=len(rows) - len(compared),
            )
        return metrics, {"clips": rows}

    return run_experiment("mask_check", cfg, body)


def hf_reference(io: ContinuousAudioIO, batch: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """HF's own forward on the same weights, per clip (empty for clips with no row)."""
    rows = io.family.rows(lengths)
    keep = (rows > 0).nonzero().flatten()
    out = [torch.empty(0, io.feature_dim()) for _ in range(len(lengths))]
    if len(keep):
        typed = batch[keep, : int(lengths[keep].max())].to(io.device, io.torch_dtype)
        flat = io.family.reference_forward(io.encoder, typed, lengths[keep])
        for index, feats in zip(keep.tolist(), flat.split(rows[keep].tolist()), strict=True):
            out[index] = feats
    return out


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
