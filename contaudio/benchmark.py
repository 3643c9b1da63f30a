"""Pure benchmark helpers: timing with warm-up and device sync, generic FLOP pieces, GEMM probe, device peaks.

Benchmarks measure; tests assert behaviour. The bench experiment turns seconds into
audio-seconds/s and two utilisation figures:

- ``util_vs_gemm = family.flops(cfg, lengths) / seconds / matmul_peak_flops(dtype, device)``: against a
  dense GEMM measured here in the same dtype (a practical ceiling, not the hardware's);
- ``mfu = family.flops(cfg, lengths) / seconds / nominal_peak_flops(device, dtype)``: against the
  device's nominal dense peak, for the GPUs in :data:`NOMINAL_PEAK_FLOPS` (None elsewhere).

Each family's FLOP rule lives in its own module; the pieces every Whisper-style block shares live here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

FLOPS_PER_MAC = 2  # one multiply-accumulate = 2 floating-point operations
QKV_OUT_PROJECTIONS = 4  # q, k, v and out projections, each d x d
MLP_MATMULS = 2  # fc1 (d -> ffn) and fc2 (ffn -> d)
ATTENTION_MATMULS = 2  # q @ k^T and weights @ v
DEFAULT_GEMM_SIZE = 4096
CUDA_GEMM_SIZE = 8192  # smaller GEMMs read well below a datacenter GPU's peak
CUDA_GEMM_CALLS = 10  # GEMMs between two syncs on CUDA, so launch and sync gaps do not count
TERA = 1e12
# Nominal dense (no sparsity) tensor-core peaks, FLOP/s, by GPU name fragment and dtype (vendor data sheets).
NOMINAL_PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H200": {torch.bfloat16: 989 * TERA, torch.float16: 989 * TERA},
    "H100 PCIe": {torch.bfloat16: 756 * TERA, torch.float16: 756 * TERA},
    "H100": {torch.bfloat16: 989 * TERA, torch.float16: 989 * TERA},  # SXM
    "A100": {torch.bfloat16: 312 * TERA, torch.float16: 312 * TERA},
}


def sync(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (a no-op unless it is CUDA)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


WORKER_THREADS = 1  # torch's DataLoader sets each worker process to one intra-op thread


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (e.g. as a data-loader worker runs), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_fn(
    fn: Callable[[], Any], warmup: int = 1, repeats: int = 5, sync_device: torch.device | str | None = None
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    With a CUDA ``sync_device`` the device is synchronised before the clock
    starts and before it stops, so queued kernels are counted.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        sync(sync_device)
        start = time.perf_counter()
        fn()
        sync(sync_device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def config_value(config: Mapping[str, Any] | Any, key: str) -> int:
    """An integer from an encoder config given as a dict or an HF config object (aliases resolved)."""
    return int(config[key] if isinstance(config, Mapping) else getattr(config, key))


def block_macs(rows: int, d_model: int, ffn: int) -> int:
    """MACs of one Whisper-style block's linear layers over ``rows`` rows: ``rows * (4 d^2 + 2 d ffn)``.

    >>> block_macs(10, 4, 8)
    1280
    """
    return rows * (QKV_OUT_PROJECTIONS * d_model * d_model + MLP_MATMULS * d_model * ffn)


def attention_macs(window_rows: int, d_model: int) -> int:
    """MACs of one attention window of ``r`` rows: scores and weighted sum, ``2 r^2 d``.

    >>> attention_macs(3, 4)
    72
    """
    return ATTENTION_MATMULS * window_rows * window_rows * d_model


def matmul_peak_flops(
    dtype: torch.dtype,
    device: torch.device | str,
    size: int = DEFAULT_GEMM_SIZE,
    warmup: int = 1,
    repeats: int = 5,
) -> float:
    """Measured dense GEMM throughput (FLOP/s): ``[size, size] @ [size, size]`` in ``dtype`` on ``device``.

    The denominator of ``util_vs_gemm``: what this machine reaches on a plain GEMM in the encoder's dtype.
    On CUDA the GEMM is at least ``CUDA_GEMM_SIZE`` square and ``CUDA_GEMM_CALLS`` of them run between
    two syncs, so the probe reads the device's real ceiling, not its launch latency.
    """
    calls = 1
    if torch.device(device).type == "cuda":
        size, calls = max(size, CUDA_GEMM_SIZE), CUDA_GEMM_CALLS
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype) for _ in range(2))

    def gemms() -> None:
        for _ in range(calls):
            torch.matmul(a, b)

    seconds = time_fn(gemms, warmup=warmup, repeats=repeats, sync_device=device)
    return FLOPS_PER_MAC * size**3 * calls / seconds


def peak_memory_of(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak CUDA memory (MiB) allocated while ``fn()`` runs once, on top of what was allocated before; None off CUDA."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def nominal_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The nominal dense peak (FLOP/s) of a known GPU in ``dtype``; None for CPUs and unknown devices.

    >>> nominal_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) / TERA
    989.0
    >>> nominal_peak_flops("NVIDIA H100 PCIe", torch.float16) / TERA, nominal_peak_flops("cpu", torch.bfloat16)
    (756.0, None)
    """
    for fragment, peaks in NOMINAL_PEAK_FLOPS.items():  # most specific names first
        if fragment in device_name:
            return peaks.get(dtype)
    return None
