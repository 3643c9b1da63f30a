"""Pure benchmark helpers: timing with warm-up and device sync, encoder FLOPs, a GEMM peak probe.

Benchmarks measure; tests assert behaviour. These helpers are what the bench
experiment calls to turn seconds into audio-seconds/s and MFU:
``mfu = encoder_flops(cfg, lengths) / time_fn(encode) / matmul_peak_flops(dtype, device)``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from contaudio.lengths import QWEN3_OMNI_CHUNK_FRAMES, WINDOW_FRAMES, ceil_div, conv_out, qwen3_omni_rows

FLOPS_PER_MAC = 2  # one multiply-accumulate = 2 floating-point operations
CONV_KERNEL = 3  # the Qwen audio towers' conv1/conv2 kernel size
CONV_STRIDE = 2  # conv2's stride
POOL_STRIDE = 2  # the stride-2 average pool before ln_post/proj
QKV_OUT_PROJECTIONS = 4  # q, k, v and out projections, each d x d
MLP_MATMULS = 2  # fc1 (d -> ffn) and fc2 (ffn -> d)
ATTENTION_MATMULS = 2  # q @ k^T and weights @ v
DEFAULT_GEMM_SIZE = 4096
# FLOP rule of a family: (encoder config as a dict or HF config object, mel frames per clip) -> FLOPs
FlopsRule = Callable[[Mapping[str, Any] | Any, Sequence[int] | torch.Tensor], float]


def sync(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (a no-op unless it is CUDA)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


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


def _config_value(config: Mapping[str, Any] | Any, key: str) -> int:
    return int(config[key] if isinstance(config, Mapping) else getattr(config, key))


def encoder_flops(encoder_config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Useful FLOPs of one Qwen2.5-Omni audio-tower forward over clips of ``lengths`` mel frames.

    Counts matmuls only (biases, norms, GELU, softmax, pooling are < 1 %), on
    valid frames/rows only (padding is overhead, not useful work). Per clip,
    cut into chunks of ``2 * n_window`` frames; for a chunk of ``f`` frames and
    ``r = (f - 1) // 2 + 1`` rows (d = d_model):

    - conv1: ``2 * f * n_mels * 3 * d``; conv2: ``2 * r * d * 3 * d``;
    - per layer: ``2 * r * 4 d^2`` (q, k, v, out) + ``2 * r * 2 d ffn`` (MLP)
      + ``2 * 2 r^2 d`` (scores and weighted sum within the chunk);
    - proj: ``2 * (T // 2) * d * output_dim`` for the clip's ``T`` rows.

    ``encoder_config``: the audio config (dict or HF config object).
    """
    d = _config_value(encoder_config, "d_model")
    ffn = _config_value(encoder_config, "encoder_ffn_dim")
    layers = _config_value(encoder_config, "encoder_layers")
    n_mels = _config_value(encoder_config, "num_mel_bins")
    output_dim = _config_value(encoder_config, "output_dim")
    chunk_frames = CONV_STRIDE * _config_value(encoder_config, "n_window")
    per_row_layer = QKV_OUT_PROJECTIONS * d * d + MLP_MATMULS * d * ffn
    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        full, tail = divmod(int(length), chunk_frames)
        for frames, count in ((chunk_frames, full), (tail, int(tail > 0))):
            rows = conv_out(frames, CONV_STRIDE)
            chunk = frames * n_mels * CONV_KERNEL * d + rows * d * CONV_KERNEL * d
            chunk += layers * (rows * per_row_layer + ATTENTION_MATMULS * rows * rows * d)
            macs += count * chunk
        macs += (conv_out(int(length), CONV_STRIDE) // POOL_STRIDE) * d * output_dim
    return float(FLOPS_PER_MAC * macs)


def windowed_encoder_flops(
    encoder_config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor, window_frames: int = WINDOW_FRAMES
) -> float:
    """FLOPs of a Whisper-style fixed-window encoder (Whisper, Qwen2-Audio, Voxtral) over clips of ``lengths`` frames.

    Every clip costs ``ceil(M / W)`` whole windows (the encoder computes the padding
    too: it attends over the full window). Per window of ``W`` frames and
    ``R = W // 2`` rows (d = d_model): conv1 ``2 * W * n_mels * 3 * d``, conv2
    ``2 * R * d * 3 * d``, and per layer ``2 * R * (4 d^2 + 2 d ffn) + 2 * 2 R^2 d``.
    Matmuls only; Qwen2-Audio's average pool and the final norm are not counted.
    HF config objects resolve aliases (Voxtral's ``hidden_size`` is ``d_model``).
    """
    d = _config_value(encoder_config, "d_model")
    ffn = _config_value(encoder_config, "encoder_ffn_dim")
    layers = _config_value(encoder_config, "encoder_layers")
    n_mels = _config_value(encoder_config, "num_mel_bins")
    rows = conv_out(window_frames, CONV_STRIDE)
    window = window_frames * n_mels * CONV_KERNEL * d + rows * d * CONV_KERNEL * d
    window += layers * (rows * (QKV_OUT_PROJECTIONS * d * d + MLP_MATMULS * d * ffn) + ATTENTION_MATMULS * rows**2 * d)
    windows = int(ceil_div(torch.as_tensor(lengths), window_frames).sum())
    return float(FLOPS_PER_MAC * window * windows)


CONV2D_TAPS = 9  # 3 x 3 kernel
QWEN3_CONV_LAYERS = 3  # conv2d1..3, each k3 s2 p1 over (mel, time)


def qwen3_omni_encoder_flops(encoder_config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the Qwen3-Omni audio tower over clips of ``lengths`` mel frames, as it runs.

    A clip of ``M >= 100`` frames is ``ceil(M / 100)`` chunks, each padded to 100 frames; a shorter
    clip one chunk of ``M``. Per chunk of width ``w``: three ``3x3 s2`` Conv2d over
    (mel, time) with ``C = downsample_hidden_size`` channels, ``F_i x T_i`` outputs
    (``2 F1 T1 C 9 + 2 F2 T2 C^2 9 + 2 F3 T3 C^2 9``) and ``conv_out``
    (``2 T3 (C F3) d``). Per valid row: ``2 (L (4 d^2 + 2 d ffn) + d^2 + d out)``; per attention
    window of ``r`` rows and layer ``2 * 2 r^2 d`` (windows of ``13 * n_window_infer / 100`` rows).
    """
    d = _config_value(encoder_config, "d_model")
    ffn = _config_value(encoder_config, "encoder_ffn_dim")
    layers = _config_value(encoder_config, "encoder_layers")
    n_mels = _config_value(encoder_config, "num_mel_bins")
    channels = _config_value(encoder_config, "downsample_hidden_size")
    output_dim = _config_value(encoder_config, "output_dim")
    window = qwen3_omni_rows(QWEN3_OMNI_CHUNK_FRAMES) * (
        _config_value(encoder_config, "n_window_infer") // QWEN3_OMNI_CHUNK_FRAMES
    )

    def chunk_macs(width: int) -> int:
        freq, steps, macs, in_channels = n_mels, width, 0, 1
        for _ in range(QWEN3_CONV_LAYERS):
            freq, steps = conv_out(freq, CONV_STRIDE), conv_out(steps, CONV_STRIDE)
            macs += freq * steps * in_channels * channels * CONV2D_TAPS
            in_channels = channels
        return macs + steps * channels * freq * d

    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        full = length >= QWEN3_OMNI_CHUNK_FRAMES
        chunks = ceil_div(length, QWEN3_OMNI_CHUNK_FRAMES)
        macs += chunks * chunk_macs(QWEN3_OMNI_CHUNK_FRAMES) if full else chunk_macs(length)
        rows = qwen3_omni_rows(length)
        macs += rows * (layers * (QKV_OUT_PROJECTIONS * d * d + MLP_MATMULS * d * ffn) + d * d + d * output_dim)
        full_windows, rest = divmod(rows, window)
        macs += layers * ATTENTION_MATMULS * d * (full_windows * window**2 + rest**2)
    return float(FLOPS_PER_MAC * macs)


def matmul_peak_flops(
    dtype: torch.dtype,
    device: torch.device | str,
    size: int = DEFAULT_GEMM_SIZE,
    warmup: int = 1,
    repeats: int = 5,
) -> float:
    """Measured dense GEMM throughput (FLOP/s): ``[size, size] @ [size, size]`` in ``dtype`` on ``device``.

    The denominator of MFU on this machine, in the encoder's own dtype.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    seconds = time_fn(lambda: torch.matmul(a, b), warmup=warmup, repeats=repeats, sync_device=device)
    return FLOPS_PER_MAC * size**3 / seconds
