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
from contaudio.encoders.windows import silence_level
from contaudio.lengths import mel_frames
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment

TINY_CLIP_FRAMES = (1, 2, 3)  # mel frames of the tiny clips mixed into every batch (0, 0 and 1 row)
CLIP_END_FRAMES = 2  # frames past ceil(N / hop) whose STFT window still overlaps the clip (n_fft // 2 / hop)
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
            wavs = [random_clip(rng, n) for n in sizes]
            mels = [io.preprocess((wav, io.sample_rate))[1][1] for wav in wavs]
            batch, lengths = pad_mels(mels, extra=int(rng.integers(0, MAX_EXTRA_PADDING + 1)))
            with torch.inference_mode():
                batched = io.encode_batch(batch, lengths)
                reference, pipeline = [None] * len(mels), [None] * len(mels)
                if cfg.mask_check.reference and io.family.window_frames is not None:
                    reference, pipeline = hf_window_references(io, wavs)
                elif cfg.mask_check.reference:
                    reference = hf_reference(io, batch, lengths)
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
                    if pipeline[i] is not None:  # recorded, not judged: the clip-end effect (see hf_window_references)
                        row.update(zip(("vs_hf_pipeline_max_abs", "vs_hf_pipeline_rel"),
                                       max_error(batched[i], pipeline[i]), strict=True))  # fmt: skip
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
            if io.family.window_frames is not None:  # recorded only: how much a loud clip end moves the rows
                metrics["max_rel_vs_hf_pipeline"] = max(r["vs_hf_pipeline_rel"] for r in rows)
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


def hf_window_references(
    io: ContinuousAudioIO, wavs: list[np.ndarray]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """30 s families, per clip from the waveform: (HF's pipeline with silence from frame M on, HF's pipeline).

    HF's extractor pads each clip to whole 30 s windows (Voxtral's processor does exactly this;
    Whisper's and Qwen2-Audio's for clips that fit one window) and HF's encoder runs on those
    windows as they are (``reference_forward`` keeps the frames past the clip). Our mel stops at
    ``M = ceil(N / hop)`` frames, so the <= 2 frames whose STFT window straddles the clip's end are
    silence in ours and clip-derived in HF's. The first reference sets exactly those frames to the
    extractor's silence (every other value HF's own) and is judged; the second is HF's pipeline
    untouched, recorded to show how much a loud clip end moves the rows.
    """
    features = io.features
    extractor = features.hf_extractor()
    judged, untouched = [], []
    for wav in wavs:
        frames = mel_frames(len(wav), features.hop_length)
        if io.family.rows(frames) == 0:
            judged.append(torch.empty(0, io.feature_dim()))
            untouched.append(judged[-1])
            continue
        padded = extractor(wav, sampling_rate=features.sampling_rate, padding="longest", truncation=False,
                           pad_to_multiple_of=features.n_samples, return_tensors="pt")["input_features"]  # fmt: skip
        mel = padded.transpose(1, 2).to(io.device, io.torch_dtype)  # [1, windows * 3000, n_mels]
        lengths = torch.tensor([frames])
        untouched.append(io.family.reference_forward(io.encoder, mel, lengths))
        edge = mel.clone()
        edge[:, frames : frames + CLIP_END_FRAMES] = silence_level(mel[:, :frames], lengths).to(mel.dtype)
        judged.append(io.family.reference_forward(io.encoder, edge, lengths))
    return judged, untouched


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
