"""Throughput: preprocess and encode_batch, ours vs the HF reference path, in the same run.

python -m experiments.bench encoder=qwen_omni dtype=bf16
python -m experiments.bench -m dtype=bf16,fp16,fp32
"""

from __future__ import annotations

import resource
import sys
from contextlib import nullcontext
from functools import partial
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm
from transformers.feature_extraction_utils import FeatureExtractionMixin

from contaudio import ContinuousAudioIO
from contaudio.benchmark import (
    WORKER_THREADS,
    matmul_peak_flops,
    nominal_peak_flops,
    peak_memory_of,
    time_fn,
    torch_threads,
)
from contaudio.encoders.packed import compiled_layers
from contaudio.encoders.registry import packed_stack_families
from experiments import config as _config  # noqa: F401  (registers the schema)
from experiments.common import pad_mels, random_clip, run_experiment

BYTES_PER_MIB = 2**20
# ru_maxrss is KiB on Linux, bytes on macOS
MAXRSS_TO_MIB = 1 / 1024 if sys.platform != "darwin" else 1 / BYTES_PER_MIB


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA allocation on cuda, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_TO_MIB


def preprocess_all(io: ContinuousAudioIO, clips: list[np.ndarray]) -> list:
    return [io.preprocess((clip, io.sample_rate)) for clip in clips]


def extract_all(io: ContinuousAudioIO, extractor: FeatureExtractionMixin, clips: list[np.ndarray]) -> list:
    """The ESPnet path: one HF extractor call per clip, as the family's processor calls it (``hf_inputs``:
    Whisper's padded to the checkpoint's chunk_length, Granite Speech's on the clip alone, ...)."""
    return [io.family.hf_inputs(extractor, clip) for clip in clips]


def bench_preprocess(cfg: DictConfig, io: ContinuousAudioIO, rng: np.random.Generator) -> list[dict[str, Any]]:
    """ms per clip for ours vs the HF extractor as the checkpoint configures it and its processor calls it.

    Both run on one intra-op thread, as in a data-loader worker (where ``preprocess`` runs).
    """
    with torch_threads(WORKER_THREADS):
        return preprocess_rows(cfg, io, rng)


def preprocess_rows(cfg: DictConfig, io: ContinuousAudioIO, rng: np.random.Generator) -> list[dict[str, Any]]:
    b, sr = cfg.bench, io.sample_rate
    extractor = io.features.hf_extractor() if b.reference else None
    rows = []
    for duration in tqdm(b.preprocess_durations_s, desc="preprocess", leave=False, disable=None):
        clips = [random_clip(rng, int(duration * sr)) for _ in range(b.preprocess_clips)]
        ours = time_fn(partial(preprocess_all, io, clips), b.warmup, b.repeats, None) / len(clips)
        batch = [(clip, sr) for clip in clips]
        batched = time_fn(partial(io.preprocess_batch, batch), b.warmup, b.repeats, None) / len(clips)
        row = {
            "duration_s": duration, "ours_ms": ours * 1e3, "ours_audio_s_per_s": duration / ours,
            "batched_ms": batched * 1e3, "batched_audio_s_per_s": duration / batched,
        }  # fmt: skip
        if extractor is not None:
            hf = time_fn(partial(extract_all, io, extractor, clips), b.warmup, b.repeats, None) / len(clips)
            row.update(hf_ms=hf * 1e3, speedup_vs_hf=hf / ours)
        rows.append(row)
    return rows


def bench_encode(
    cfg: DictConfig, io: ContinuousAudioIO, rng: np.random.Generator, gemm_flops: float | None
) -> list[dict[str, Any]]:
    """audio-seconds/s, rows/s, real-time factor and utilisation of encode_batch vs HF's own model path.

    The HF column is the family's ``reference_forward``: HF's model as a user runs a batch
    (Qwen2.5/Qwen3-Omni: one ``get_audio_features`` call; the 30 s families: HF's encoder on every
    30 s window). ``util_vs_gemm`` divides the family's matmul FLOP/s by a GEMM measured here in
    the same dtype; ``mfu`` by the device's nominal dense peak (known GPUs only). On CUDA each cell
    also reports the peak memory one call of ours and of HF's allocates (``*_peak_mib``), and with
    ``bench.compile=<backend>`` our layer stack runs through ``torch.compile(dynamic=True)``.
    """
    b, sr, device = cfg.bench, io.sample_rate, io.device
    if b.compile and not io.family.graph_stack:
        raise ValueError(
            f"bench.compile={b.compile}: the {io.family.name} forward runs its layers as HF's own modules, and "
            f"contaudio compiles only its packed layer stack (families: {', '.join(packed_stack_families())}); drop "
            "bench.compile for this encoder"
        )
    nominal = nominal_peak_flops(torch.cuda.get_device_name(device), io.torch_dtype) if device.type == "cuda" else None
    rows = []
    grid = [(d, n) for d in b.durations_s for n in b.batch_sizes]
    for duration, batch_size in tqdm(grid, desc="encode", leave=False, disable=None):
        mels = [io.preprocess((random_clip(rng, int(duration * sr)), sr))[1][1] for _ in range(batch_size)]
        batch, lengths = pad_mels(mels)
        batch = batch.to(device)
        out_rows = int(io.family.rows(lengths).sum())
        audio_s = duration * batch_size
        flops = io.family.flops(io.encoder.config, lengths)
        with torch.inference_mode():
            encode = partial(io.encode_batch, batch, lengths)
            with compiled_layers(b.compile) if b.compile else nullcontext():
                ours = time_fn(encode, b.warmup, b.repeats, device)
                ours_peak = peak_memory_of(encode, device)
            row = {
                "duration_s": duration, "batch_size": batch_size, "ours_s": ours,
                "ours_audio_s_per_s": audio_s / ours, "ours_rows_per_s": out_rows / ours, "ours_rtf": ours / audio_s,
                "ours_tflops": flops / ours / 1e12,
            }  # fmt: skip
            if ours_peak is not None:
                row["ours_peak_mib"] = ours_peak
            if b.reference:
                typed = batch.to(io.torch_dtype)
                reference = partial(io.family.reference_forward, io.encoder, typed, lengths)
                ref = time_fn(reference, b.warmup, b.repeats, device)
                row.update(hf_s=ref, hf_audio_s_per_s=audio_s / ref, speedup_vs_hf=ref / ours)
                if (hf_peak := peak_memory_of(reference, device)) is not None:
                    row["hf_peak_mib"] = hf_peak
        for name, peak in (("util_vs_gemm", gemm_flops), ("mfu", nominal)):
            if peak:
                row[f"ours_{name}"] = flops / ours / peak
                if "hf_s" in row:
                    row[f"hf_{name}"] = flops / row["hf_s"] / peak
        rows.append(row)
    return rows


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark for one config; returns the record (also written as record.json)."""

    def body(cfg: DictConfig, io: ContinuousAudioIO):
        rng = np.random.default_rng(cfg.seed)
        copy_s = time_fn(io.copy_for_worker, cfg.bench.warmup, cfg.bench.repeats, None)
        pre = bench_preprocess(cfg, io, rng)
        gemm = cfg.bench.gemm_size
        peak = matmul_peak_flops(io.torch_dtype, io.device, gemm, cfg.bench.warmup, cfg.bench.repeats) if gemm else None
        enc = bench_encode(cfg, io, rng, peak)
        metrics = {
            "copy_for_worker_ms": copy_s * 1e3,
            "gemm_probe_tflops": peak / 1e12 if peak else None,
            "peak_memory_mib": peak_memory_mib(io.device),
            "preprocess": {f"{r['duration_s']:g}s": r for r in pre},
            "encode": {f"{r['duration_s']:g}s_x{r['batch_size']}": r for r in enc},
        }
        return metrics, {"preprocess": pre, "encode": enc}

    return run_experiment("bench", cfg, body)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
