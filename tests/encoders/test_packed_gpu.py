"""The packed forward on CUDA (skipped without a GPU): both Qwen towers at the real head_dim (64), bf16 and
fp16, inference and gradients (with and without activation checkpointing), all-full and mixed batches,
every kernel choice; no host sync inside the layer loop; cuDNN's bf16 narrow convs.

Each low-precision result is judged as HF's own is: its RMS error against HF's float32 forward on the same
weights may be at most ``LOW_PRECISION_FACTOR`` times HF's own at that dtype.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contaudio.encoders import find_card, get_family
from contaudio.encoders.loading import perturb_init_
from contaudio.encoders.packed import (
    KERNEL_ATTRIBUTE,
    WindowLayout,
    attention_kernel,
    conv2d_bf16_safe,
    flash_attn_available,
    run_layers,
    varlen_attn_available,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
LOW_PRECISION_FACTOR = 1.1  # ours may be at most 10 % worse than HF's own at the same dtype
RMS_FLOOR = 1e-6
HEAD_DIM_64 = {"d_model": 128, "encoder_attention_heads": 2, "encoder_ffn_dim": 256, "encoder_layers": 2}
TOWERS = {  # family -> (tiny card, overrides giving head_dim 64, mixed lengths, lengths whose windows are all full)
    "qwen2_5_omni": ("contaudio/tiny-qwen2.5-omni", {**HEAD_DIM_64, "output_dim": 96}, [3, 199, 401, 800, 37],
                     [200, 400]),
    "qwen3_omni": ("contaudio/tiny-qwen3-omni", {**HEAD_DIM_64, "output_dim": 96, "downsample_hidden_size": 16},
                   [3, 37, 250, 1013, 100], [400, 200]),
}  # fmt: skip
KERNELS = ("sdpa", "eager", "varlen", "flash")


def skip_unavailable(kernel: str) -> None:
    if kernel == "varlen" and not varlen_attn_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    if kernel == "flash" and not flash_attn_available():
        pytest.skip("flash-attn is not installed")


def tower(family: str, kernel: str, dtype: torch.dtype) -> torch.nn.Module:
    """The family's tiny card with head_dim 64, perturbed random weights (seeded), on CUDA in ``dtype``."""
    card, overrides, _, _ = TOWERS[family]
    fam = get_family(family)
    raw = {key: value for key, value in find_card(card).encoder_config.items() if key != "model_type"}
    config = fam.config_class(**{**raw, **overrides})
    hf_attention = {"eager": "eager", "flash": "flash_attention_2"}.get(kernel, "sdpa")
    torch.manual_seed(0)
    encoder = fam.encoder_class._from_config(config, attn_implementation=hf_attention, dtype=torch.float32)
    perturb_init_(encoder, seed=0)
    if kernel in ("varlen", "sdpa"):
        setattr(encoder.config, KERNEL_ATTRIBUTE, kernel)
    assert attention_kernel(encoder.config, CUDA, dtype) == kernel
    return encoder.to(CUDA, dtype).eval()


def batch(lengths: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    lengths_t = torch.tensor(lengths)
    mel = torch.randn(len(lengths), max(lengths) + 5, 128, generator=generator)
    mel = mel.masked_fill((torch.arange(mel.shape[1]) >= lengths_t[:, None])[:, :, None], 1e3)  # garbage padding
    return mel.to(CUDA, dtype), lengths_t


def hf_per_clip(family: str, encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's own forward, one clip per call (Qwen3-Omni's batched call leaks padding into short clips)."""
    fam = get_family(family)
    return torch.cat([fam.reference_forward(encoder, mel[i : i + 1, :m], lengths[i : i + 1])
                      for i, m in enumerate(lengths.tolist())])  # fmt: skip


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).square().mean().sqrt())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", TOWERS)
@pytest.mark.parametrize("which", ["mixed", "all_full"])
def test_inference_error_no_worse_than_hfs_own(family: str, dtype: torch.dtype, kernel: str, which: str) -> None:
    skip_unavailable(kernel)
    lengths = TOWERS[family][2 if which == "mixed" else 3]
    reference_tower = tower(family, "sdpa" if kernel in ("varlen", "flash") else kernel, torch.float32)
    low = tower(family, kernel, dtype)
    mel, lengths_t = batch(lengths, torch.float32)
    with torch.inference_mode():
        ref = hf_per_clip(family, reference_tower, mel, lengths_t)
        ours = get_family(family).forward(low, mel.to(dtype), lengths_t)
        theirs = hf_per_clip(family, low, mel.to(dtype), lengths_t)
    assert ours.shape == ref.shape and bool(torch.isfinite(ours).all())
    assert rms(ours, ref) <= LOW_PRECISION_FACTOR * rms(theirs, ref) + RMS_FLOOR


def parameter_grads(encoder: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device)
    encoder.zero_grad(set_to_none=True)
    (out.float() * weights).sum().backward()
    return torch.cat([p.grad.float().flatten() for p in encoder.parameters() if p.grad is not None])


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", TOWERS)
def test_gradients_no_worse_than_hfs_own(family: str, dtype: torch.dtype, kernel: str, checkpointing: bool) -> None:
    skip_unavailable(kernel)
    mel, lengths = batch(TOWERS[family][2], torch.float32)
    fam = get_family(family)
    reference_tower = tower(family, "sdpa" if kernel in ("varlen", "flash") else kernel, torch.float32).train()
    low = tower(family, kernel, dtype).train()
    if checkpointing:
        low.gradient_checkpointing_enable()
    ref = parameter_grads(reference_tower, hf_per_clip(family, reference_tower, mel, lengths))
    ours = parameter_grads(low, fam.forward(low, mel.to(dtype), lengths))
    theirs = parameter_grads(low, hf_per_clip(family, low, mel.to(dtype), lengths))
    assert bool(torch.isfinite(ours).all()) and ours.shape == ref.shape
    assert rms(ours, ref) <= LOW_PRECISION_FACTOR * rms(theirs, ref) + RMS_FLOOR


@pytest.mark.parametrize("kernel", ["sdpa", "varlen", "flash"])
@pytest.mark.parametrize("window_rows", [[100, 37, 100, 5], [26, 26, 26]])
def test_the_layer_loop_makes_no_host_sync(kernel: str, window_rows: list[int]) -> None:
    skip_unavailable(kernel)
    encoder = tower("qwen2_5_omni", kernel, torch.bfloat16)
    layout = WindowLayout.from_window_rows(torch.tensor(window_rows), CUDA)
    hidden = torch.randn(sum(window_rows), encoder.config.d_model, device=CUDA, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            out = run_layers(encoder.layers, hidden, layout, kernel)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == hidden.shape and bool(torch.isfinite(out).all())


def test_the_default_cuda_kernel_in_half_precision_is_torchs_varlen() -> None:
    if not varlen_attn_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    config = get_family("qwen2_5_omni").config_class(**TOWERS["qwen2_5_omni"][1])
    assert attention_kernel(config, CUDA, torch.bfloat16) == "varlen"
    assert attention_kernel(config, CUDA, torch.float32) == "sdpa"


@pytest.mark.parametrize("width", [1, 2, 3, 4, 8])
def test_cudnn_bf16_narrow_convs_are_right(width: int) -> None:
    """torch's CPU bf16 Conv2d is wrong for inputs under 3 frames wide; cuDNN's is right, so the float32 guard
    (``conv2d_bf16_safe``) stays CPU-only. If this fails, the guard must cover CUDA too."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 16, 3, stride=2, padding=1).to(CUDA)
    x = torch.randn(4, 1, 128, width, device=CUDA)
    with torch.inference_mode():
        exact = conv(x)
        ours = conv2d_bf16_safe(conv.to(torch.bfloat16), x.to(torch.bfloat16)).float()
        reference = F.conv2d(x.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), 2, 1).float()
    scale = float(exact.abs().max())
    assert float((ours - exact).abs().max()) <= 0.02 * scale
    assert float((reference - exact).abs().max()) <= 0.02 * scale
