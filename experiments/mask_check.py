"""Padding correctness: each clip of a padded batch vs the clip alone vs HF's own path (the oracle).

python -m experiments.mask_check encoder=qwen_omni dtype=bf16

Clips are speech-like (noise bursts, pauses, a silent end) with 1-3 frame clips and one clip
longer than 300 s mixed in. Each clip is judged by :func:`contaudio.conformance.judge`: its rows
in the padded batch, alone, and from HF's extractor + model on the same weights, within the
resolved dtype's tolerance. In bf16/fp16 the values are judged as HF's own are: against HF's answer
in float32 on the same clip (the same weights upcast), contaudio's RMS error may be at most 1.5x HF's own
error at that dtype (:func:`contaudio.conformance.low_precision_bound`). An HF error judges a clip by
contaudio's documented rule only where the family declares it (``expected_refusals``); any other
fails the clip, and the run fails when HF judged fewer clips than the family's ``min_oracle_share``.
For the 30 s families the effect of a clip cut off loud (which the contract cannot carry, see
README) is measured on one extra clip and recorded, not judged.
"""

from __future__ import annotations

import copy
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from contaudio import ContinuousAudioIO
from contaudio.conformance import (
    LOW_PRECISION_FACTOR,
    ORACLE,
    RULE,
    UNJUDGED,
    judge,
    max_error,
    oracle_share,
    share_reason,
)
from contaudio.encoders.refusals import ClipSize
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment, speechlike_clip, tolerance

TINY_CLIP_FRAMES = (1, 2, 3)  # mel frames of the tiny clips mixed into every batch (0, 0 and 1 row for Qwen2.5)
MAX_EXTRA_PADDING = 50  # frames of padding past the longest clip, drawn per batch
MAX_EXAMPLES = 10  # failures kept in the record's summary (every clip is in the table)
LOUD_END_S = 5.0  # the clip cut off loud, measured for the 30 s families


def clip_lengths(
    cfg: DictConfig, rng: np.random.Generator, sample_rate: int, hop: int, min_samples: int = 0
) -> list[list[int]]:
    """Sample counts per batch: random durations, plus 1-3 frame clips and one > 300 s clip when enabled; none
    below ``min_samples`` (the featurizer's shortest clip: shorter ones are refused, not encoded)."""
    m = cfg.mask_check
    batches = []
    for index in range(m.num_batches):
        sizes = rng.integers(max(1, min_samples), int(m.max_duration_s * sample_rate), size=m.batch_size).tolist()
        if m.tiny_clips:
            sizes[int(rng.integers(len(sizes)))] = max(int(rng.choice(TINY_CLIP_FRAMES)) * hop, min_samples)
        if index == 0 and m.long_clip_s > 0:
            sizes.append(int(m.long_clip_s * sample_rate))
        batches.append(sizes)
    return batches


def float32_reference(io: ContinuousAudioIO) -> torch.nn.Module | None:
    """The encoder's float32 copy (its weights upcast: the same values) that HF's reference answer runs on, for a
    reduced-precision run; None in float32."""
    if io.torch_dtype == torch.float32:
        return None
    return copy.deepcopy(io.encoder).float()


def check_batch(
    cfg: DictConfig,
    io: ContinuousAudioIO,
    wavs: list[np.ndarray],
    rng: np.random.Generator,
    reference_encoder: torch.nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Encode ``wavs`` as one batch padded with noise and one by one, ask the oracle (and, with
    ``reference_encoder``, HF's float32 answer), judge each clip."""
    sr, tol, extractor = io.sample_rate, tolerance(cfg, io), io.features.hf_extractor()
    mels = [io.preprocess((wav, sr))[1][1] for wav in wavs]
    batch, lengths = pad_mels(mels, extra=int(rng.integers(0, MAX_EXTRA_PADDING + 1)), rng=rng)
    rows = []
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, (wav, mel) in enumerate(zip(wavs, mels, strict=True)):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            asked = cfg.mask_check.reference
            oracle = io.family.oracle(io.encoder, extractor, wav) if asked else None
            reference = None
            if asked and reference_encoder is not None:
                reference = io.family.oracle(reference_encoder, extractor, wav)
            clip = ClipSize(mel.shape[0], len(wav))
            verdict = judge(batched[i], alone, oracle, io.find_length(len(wav)), tol, clip,
                            io.family.expected_refusals, reference)  # fmt: skip
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
        batches = clip_lengths(cfg, rng, io.sample_rate, io.features.hop_length, io.features.min_samples)
        reference_encoder = float32_reference(io) if cfg.mask_check.reference else None
        for index, sizes in enumerate(tqdm(batches, desc="mask_check", leave=False, disable=None)):
            wavs = [speechlike_clip(rng, n, io.sample_rate) for n in sizes]
            rows += [{"batch": index, **row} for row in check_batch(cfg, io, wavs, rng, reference_encoder)]
        failures = [failure_message(r) for r in rows if not r["passed"]]
        judged_by = [r["judged_by"] for r in rows]
        too_few = share_reason(judged_by, io.family.min_oracle_share, io.family.name)
        first_failures = failures[:MAX_EXAMPLES] + ([too_few] if too_few else [])  # clips first: they are named
        failures += [too_few] if too_few else []
        tol = tolerance(cfg, io)
        low_precision = reference_encoder is not None
        metrics = {
            "passed": not failures, "clips": len(rows), "failed_clips": sum(not r["passed"] for r in rows),
            "max_abs_batched_vs_alone": column_max(rows, "batched_vs_alone_max_abs"),
            "max_rel_batched_vs_alone": column_max(rows, "batched_vs_alone_rel"),
            "max_abs_vs_oracle": column_max(rows, "vs_oracle_max_abs"),
            "max_rel_vs_oracle": column_max(rows, "vs_oracle_rel"),
            "judged_by_oracle": judged_by.count(ORACLE), "judged_by_rule": judged_by.count(RULE),
            "hf_failures_undeclared": judged_by.count(UNJUDGED),
            "oracle_share": oracle_share(judged_by) if cfg.mask_check.reference else None,
            "min_oracle_share": io.family.min_oracle_share,
            "oracle": io.family.oracle_path, "returns": io.family.returns,
            "tolerance": {"atol": tol.atol, "rtol": tol.rtol, "dtype": io.dtype_choice.name,
                          "vs_hf": (f"RMS <= {LOW_PRECISION_FACTOR:g}x HF's own against its float32 answer"
                                    if low_precision else "atol + rtol * max |HF|")},
            "max_ratio_vs_hf_own": column_max(rows, "ratio_vs_hf_own") if low_precision else None,
            "loud_end_rel_vs_oracle": loud_end_effect(io, rng) if cfg.mask_check.reference else None,
            "first_failures": first_failures,
        }  # fmt: skip
        for message in first_failures:
            print(f"mask_check FAILED {message}")
        return metrics, {"clips": rows}

    return run_experiment("mask_check", cfg, body)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
