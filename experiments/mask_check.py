"""Padding correctness: each clip of a padded batch vs the clip alone vs HF's own path (the oracle).

python -m experiments.mask_check encoder=qwen_omni dtype=bf16

Clips are speech-like (noise bursts, pauses, a silent end) with 1-3 frame clips and one clip
longer than 300 s mixed in. Each clip is judged by :func:`contaudio.conformance.judge`: its rows
in the padded batch, alone, and from HF's extractor + model on the same weights, within the
resolved dtype's tolerance. For the 30 s families the effect of a clip cut off loud (which the
contract cannot carry, see README) is measured on one extra clip and recorded, not judged.
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from contaudio import ContinuousAudioIO
from contaudio.conformance import judge, max_error
from contaudio.encoders import OracleRows
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment, speechlike_clip, tolerance

TINY_CLIP_FRAMES = (1, 2, 3)  # mel frames of the tiny clips mixed into every batch (0, 0 and 1 row for Qwen2.5)
MAX_EXTRA_PADDING = 50  # frames of padding past the longest clip, drawn per batch
MAX_EXAMPLES = 10  # failures kept in the record's summary (every clip is in the table)
LOUD_END_S = 5.0  # the clip cut off loud, measured for the 30 s families
NOT_ASKED = OracleRows(None, "not asked (mask_check.reference=false)")


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


def check_batch(
    cfg: DictConfig, io: ContinuousAudioIO, wavs: list[np.ndarray], rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Encode ``wavs`` as one batch padded with noise and one by one, ask the oracle, judge each clip."""
    sr, tol, extractor = io.sample_rate, tolerance(cfg, io), io.features.hf_extractor()
    mels = [io.preprocess((wav, sr))[1][1] for wav in wavs]
    batch, lengths = pad_mels(mels, extra=int(rng.integers(0, MAX_EXTRA_PADDING + 1)), rng=rng)
    rows = []
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, (wav, mel) in enumerate(zip(wavs, mels, strict=True)):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            oracle = io.family.oracle(io.encoder, extractor, wav) if cfg.mask_check.reference else NOT_ASKED
            verdict = judge(batched[i], alone, oracle, io.find_length(len(wav)), tol)
            rows.append({"clip": i, "num_samples": len(wav), "frames": mel.shape[0], **verdict.figures,
                         "judged_by": verdict.judged_by, "passed": verdict.passed,
                         "reasons": "; ".join(verdict.reasons)})  # fmt: skip
    return rows


def loud_end_effect(io: ContinuousAudioIO, rng: np.random.Generator) -> float | None:
    """Relative max difference from HF's pipeline for a noise clip cut off loud (30 s families; recorded only)."""
    if io.family.window_frames is None:
        return None
    wav = random_clip(rng, int(LOUD_END_S * io.sample_rate))
    mel = torch.from_numpy(io.preprocess((wav, io.sample_rate))[1][1])
    with torch.inference_mode():
        (ours,) = io.encode_batch(mel[None], torch.tensor([mel.shape[0]]))
        oracle = io.family.oracle(io.encoder, io.features.hf_extractor(), wav)
    return None if oracle.rows is None or oracle.rows.shape != ours.shape else max_error(ours, oracle.rows)[1]


def failure_message(row: dict[str, Any]) -> str:
    clip = f"batch {row['batch']} clip {row['clip']} ({row['num_samples']} samples, {row['frames']} frames)"
    return f"{clip}: {row['reasons']}"


def column_max(rows: list[dict[str, Any]], key: str) -> float | None:
    return max((r[key] for r in rows if r.get(key) is not None), default=None)


def run(cfg: DictConfig) -> dict[str, Any]:
    def body(cfg: DictConfig, io: ContinuousAudioIO):
        rng = np.random.default_rng(cfg.seed)
        rows = []
        batches = clip_lengths(cfg, rng, io.sample_rate, io.features.hop_length)
        for index, sizes in enumerate(tqdm(batches, desc="mask_check", leave=False, disable=None)):
            wavs = [speechlike_clip(rng, n, io.sample_rate) for n in sizes]
            rows += [{"batch": index, **row} for row in check_batch(cfg, io, wavs, rng)]
        failures = [failure_message(r) for r in rows if not r["passed"]]
        tol = tolerance(cfg, io)
        metrics = {
            "passed": not failures, "clips": len(rows), "failed_clips": len(failures),
            "max_abs_batched_vs_alone": column_max(rows, "batched_vs_alone_max_abs"),
            "max_rel_batched_vs_alone": column_max(rows, "batched_vs_alone_rel"),
            "max_abs_vs_oracle": column_max(rows, "vs_oracle_max_abs"),
            "max_rel_vs_oracle": column_max(rows, "vs_oracle_rel"),
            "judged_by_oracle": sum(r["judged_by"] == "oracle" for r in rows),
            "judged_by_rule": sum(r["judged_by"] != "oracle" for r in rows),
            "oracle": io.family.oracle_path, "returns": io.family.returns,
            "tolerance": {"atol": tol.atol, "rtol": tol.rtol, "dtype": io.dtype_choice.name},
            "loud_end_rel_vs_oracle": loud_end_effect(io, rng) if cfg.mask_check.reference else None,
            "first_failures": failures[:MAX_EXAMPLES],
        }  # fmt: skip
        for message in failures[:MAX_EXAMPLES]:
            print(f"mask_check FAILED {message}")
        return metrics, {"clips": rows}

    return run_experiment("mask_check", cfg, body)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
