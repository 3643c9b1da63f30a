"""Packed window attention and chunking: the generic machinery, against HF's own layers and helpers.

The layer stack on packed rows (every kernel, any pass size, values and gradients) is checked
against HF's ``Qwen2_5OmniAudioEncoderLayer`` run on the same rows with ``cu_seqlens`` (HF's own
loop over windows); the chunk and pool bookkeeping against HF's helper functions. The families'
whole forwards are checked in their own files.
"""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers.checkpoints import perturb_, tiny_audio_config
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as qwen2_5_modeling
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as qwen3_modeling

from contaudio.encoders import packed
from contaudio.encoders.packed import (
    KERNEL_ATTRIBUTE,
    WindowLayout,
    attention_kernel,
    check_lengths,
    chunk_frames_per_clip,
    compiled_layers,
    conv2d_bf16_safe,
    mel_chunks,
    pool_group_starts,
    run_windowed_stack,
    sort_windows,
    window_passes,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FP32_TOLERANCE = 1e-5  # max abs, packed stack vs HF's layers, float32
GRAD_TOLERANCE = 1e-5  # float32 gradients, relative to the largest entry (at least 1)
BF16_REL_TOLERANCE = 0.02  # bf16 conv vs float32, relative to the largest output (bf16 eps: 0.008)
# windows of mixed lengths (several runs of equal length, a 1-row window) and all-full windows (no key mask)
MIXED_WINDOWS = [100, 100, 37, 1, 100, 13, 26, 26, 5]
FULL_WINDOWS = [26, 26, 26]
LAYOUTS = {"mixed": MIXED_WINDOWS, "full": FULL_WINDOWS}
KERNELS = ("sdpa", "sdpa_buckets", "eager")
ONE_PASS = 10**9  # CPU_ROWS_PER_PASS that keeps any test batch in one pass through the stack
CLIP_LENGTHS = [3, 1, 2, 5, 199, 200, 201, 399, 400, 401, 450, 601]


def layers(attn_implementation: str) -> torch.nn.ModuleList:
    """The perturbed layer stack of a Qwen2.5-Omni tower (Whisper-style pre-norm blocks), 3 layers of d=64."""
    overrides = {"d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "encoder_layers": 3}
    config = Qwen2_5OmniAudioEncoderConfig(**{**tiny_audio_config(), **overrides})
    torch.manual_seed(0)
    encoder = Qwen2_5OmniAudioEncoder._from_config(config, attn_implementation=attn_implementation)
    perturb_(encoder, seed=1)
    return encoder.eval().layers


def hf_stack(stack: torch.nn.ModuleList, hidden: torch.Tensor, window_rows: list[int]) -> torch.Tensor:
    """HF's own layers on packed rows ``[N, d]``: attention per window of ``cu_seqlens``."""
    cu_seqlens = F.pad(torch.tensor(window_rows).cumsum(0), (1, 0)).to(torch.int32)
    for layer in stack:
        hidden = layer(hidden, cu_seqlens=cu_seqlens)[0]
    return hidden


def rows_for(window_rows: list[int], d: int = 64) -> torch.Tensor:
    return torch.randn(sum(window_rows), d, generator=torch.Generator().manual_seed(0))


def grads(forward, stack: torch.nn.ModuleList, hidden: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backprop a fixed random projection of ``forward(hidden)``: (parameter grads by name, input grad)."""
    stack.zero_grad(set_to_none=True)
    hidden = hidden.clone().requires_grad_(True)
    out = forward(hidden)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    return {name: p.grad for name, p in stack.named_parameters()}, hidden.grad


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_equals_hfs_layers_window_by_window(kernel: str, layout: str) -> None:
    window_rows = LAYOUTS[layout]
    stack = layers("eager" if kernel == "eager" else "sdpa")
    hidden = rows_for(window_rows)
    with torch.inference_mode():
        ours = run_windowed_stack(stack, hidden, torch.tensor(window_rows), kernel)
        theirs = hf_stack(stack, hidden, window_rows)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("rows_per_pass", [1, 60, ONE_PASS])
def test_cpu_passes_of_whole_windows_change_nothing(monkeypatch, rows_per_pass: int) -> None:
    """The CPU kernel runs the stack in passes of whole windows: any pass size gives HF's values and gradients."""
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", rows_per_pass)
    stack = layers("sdpa")
    hidden = rows_for(MIXED_WINDOWS)
    ours, ours_in = grads(lambda h: run_windowed_stack(stack, h, torch.tensor(MIXED_WINDOWS), "sdpa_buckets"), stack,
                          hidden)  # fmt: skip
    theirs, theirs_in = grads(lambda h: hf_stack(stack, h, MIXED_WINDOWS), stack, hidden)
    for name, grad in {**ours, "input": ours_in}.items():  # fp32 sums over many rows: relative to the largest entry
        reference = theirs_in if name == "input" else theirs[name]
        assert (grad - reference).abs().max() <= GRAD_TOLERANCE * max(1.0, reference.abs().max().item()), name


def count_sdpa_calls(monkeypatch) -> list[tuple[int, torch.Tensor | None]]:
    """Record ``(window length, attn_mask)`` of every SDPA call from now on."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, *args, **kwargs):
        calls.append((q.shape[2], kwargs.get("attn_mask")))
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    return calls


def test_grid_kernel_makes_one_masked_call_per_layer(monkeypatch) -> None:
    """The CUDA "sdpa" kernel: every window in ONE SDPA call per layer, with a [windows, 1, 1, len] key mask."""
    stack = layers("sdpa")
    calls = count_sdpa_calls(monkeypatch)
    with torch.inference_mode():
        run_windowed_stack(stack, rows_for(MIXED_WINDOWS), torch.tensor(MIXED_WINDOWS), "sdpa")
        run_windowed_stack(stack, rows_for(FULL_WINDOWS), torch.tensor(FULL_WINDOWS), "sdpa")
    mixed, full = calls[: len(stack)], calls[len(stack) :]
    assert len(mixed) == len(full) == len(stack)
    shape = (len(MIXED_WINDOWS), 1, 1, max(MIXED_WINDOWS))
    assert all(mask.shape == shape and mask.dtype == torch.bool for _, mask in mixed)
    assert all(mask is None for _, mask in full)  # every window full: no mask at all


def test_cpu_kernel_makes_one_unmasked_call_per_window_length(monkeypatch) -> None:
    """CPU: windows sorted by length, one SDPA call per distinct length, no mask, no padding."""
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", ONE_PASS)
    stack = layers("sdpa")
    calls = count_sdpa_calls(monkeypatch)
    with torch.inference_mode():
        run_windowed_stack(stack, rows_for(MIXED_WINDOWS), torch.tensor(MIXED_WINDOWS), "sdpa_buckets")
    distinct = sorted(set(MIXED_WINDOWS), reverse=True)
    assert len(calls) == len(distinct) * len(stack)
    assert all(mask is None for _, mask in calls)
    assert [length for length, _ in calls[: len(distinct)]] == distinct


def test_kernel_choice(monkeypatch) -> None:
    def config(implementation: str | None, chosen: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(_attn_implementation=implementation, **({KERNEL_ATTRIBUTE: chosen} if chosen else {}))

    cpu, cuda, bf16, fp32 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16, torch.float32
    assert attention_kernel(config("eager"), cpu) == attention_kernel(config("eager"), cuda, bf16) == "eager"
    for implementation in (None, "sdpa", "flash_attention_2"):  # CPU: one unmasked call per window length
        assert attention_kernel(config(implementation, "varlen"), cpu, bf16) == "sdpa_buckets"
    monkeypatch.setattr(packed, "varlen_attn_available", lambda: True)
    monkeypatch.setattr(packed, "flash_attn_available", lambda: True)
    assert attention_kernel(config("sdpa"), cuda, bf16) == "varlen"  # the CUDA default in half precision
    assert attention_kernel(config("sdpa"), cuda, fp32) == attention_kernel(config("sdpa"), cuda) == "sdpa"
    assert attention_kernel(config("sdpa", "sdpa"), cuda, bf16) == "sdpa"  # asked for by name
    assert attention_kernel(config("sdpa", "varlen"), cuda, fp32) == "varlen"
    assert attention_kernel(config("flash_attention_2"), cuda, bf16) == "flash"
    monkeypatch.setattr(packed, "flash_attn_available", lambda: False)
    monkeypatch.setattr(packed, "varlen_attn_available", lambda: False)
    assert attention_kernel(config("flash_attention_2"), cuda, bf16) == attention_kernel(config(None), cuda, bf16)
    assert attention_kernel(config(None), cuda, bf16) == "sdpa"


def test_one_qkv_grid_equals_three_grids() -> None:
    layout = WindowLayout.from_window_rows(torch.tensor(MIXED_WINDOWS), "cpu")
    q, k, v = (torch.randn(sum(MIXED_WINDOWS), 2, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for fused, single in zip(layout.qkv_grid(q, k, v), (q, k, v), strict=True):
        assert torch.equal(fused, layout.to_grid(single).transpose(1, 2))
    assert layout.num_rows == sum(MIXED_WINDOWS)


def test_compiled_layers_trace_and_give_the_same_rows() -> None:
    """``bench.compile``: the layer runs through torch.compile(dynamic=True); the eager backend only traces."""
    stack = layers("sdpa")
    with torch.inference_mode():
        plain = run_windowed_stack(stack, rows_for(MIXED_WINDOWS), torch.tensor(MIXED_WINDOWS), "sdpa")
        with compiled_layers(backend="eager"):
            traced = run_windowed_stack(stack, rows_for(MIXED_WINDOWS), torch.tensor(MIXED_WINDOWS), "sdpa")
    torch.testing.assert_close(traced, plain, atol=FP32_TOLERANCE, rtol=0)
    assert packed._compiled_layer_forward is None  # restored after the block


def test_sorted_windows_round_trip() -> None:
    window_rows = torch.tensor([5, 2, 5, 1, 2])
    rows = torch.arange(15.0)
    sorted_rows, index = sort_windows(window_rows)
    assert sorted_rows.tolist() == [5, 5, 2, 2, 1]
    assert rows[index].tolist() == [*range(0, 5), *range(7, 12), 5, 6, 13, 14, 12]
    assert torch.equal(rows[index][torch.argsort(index)], rows)


def test_window_passes_cover_every_window_once() -> None:
    window_rows = torch.tensor(MIXED_WINDOWS)
    for max_rows in (1, 50, 150, ONE_PASS):
        passes = window_passes(window_rows, max_rows)
        assert passes[0][0] == 0 and passes[-1][1] == len(window_rows)
        assert all(end > first for first, end in passes)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(passes))


def test_window_layout_round_trip() -> None:
    layout = WindowLayout.from_window_rows(torch.tensor([3, 1, 2]), "cpu")
    rows = torch.arange(6.0)[:, None]  # [N, 1]
    grid = layout.to_grid(rows)
    assert grid[:, :, 0].tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert layout.key_mask.shape == (3, 1, 1, 3) and layout.num_rows == 6
    assert torch.equal(layout.to_rows(grid), rows)
    full = WindowLayout.from_window_rows(torch.tensor([2, 2]), "cpu")
    assert full.key_mask is None and torch.equal(full.to_rows(full.to_grid(rows[:4])), rows[:4])
    with pytest.raises(ValueError, match="counts >= 1"):
        WindowLayout.from_window_rows(torch.tensor([2, 0]), "cpu")


@pytest.mark.parametrize(("modeling", "n_window"), [(qwen2_5_modeling, 100), (qwen3_modeling, 50),
                                                    (qwen2_5_modeling, 5)])  # fmt: skip
def test_chunks_equal_hfs_chunk_and_pad_features(modeling, n_window: int) -> None:
    """Chunk lengths and zero-padded chunk contents, whatever the padded batch holds past each clip."""
    lengths = torch.tensor(CLIP_LENGTHS)
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(len(lengths), int(lengths.max()) + 7, 16, generator=generator)
    valid = torch.arange(mel.shape[1]) < lengths[:, None]
    mel = mel.masked_fill(~valid[:, :, None], 1e3)  # loud garbage past every clip's end
    hf_chunks, hf_chunk_lengths = modeling.chunk_and_pad_features(mel[valid].T, lengths, n_window)
    chunks, chunk_lengths = mel_chunks(mel, lengths, 2 * n_window)
    assert chunk_lengths.tolist() == hf_chunk_lengths.tolist()
    assert chunk_frames_per_clip(lengths, 2 * n_window)[0].tolist() == hf_chunk_lengths.tolist()
    assert torch.equal(chunks, hf_chunks)


def test_pool_groups_equal_hfs_pool_indices() -> None:
    lengths = torch.tensor(CLIP_LENGTHS)
    rows = (lengths - 1) // 2 + 1  # rows after the stride-2 conv
    assert pool_group_starts(rows, 2).tolist() == qwen2_5_modeling.get_pool_indices(lengths).tolist()


def test_bad_lengths_are_rejected() -> None:
    mel = torch.zeros(2, 10, 8)
    assert check_lengths(mel, torch.tensor([3, 10], dtype=torch.int32)).dtype == torch.long
    with pytest.raises(ValueError, match=r"1\.\.M_max"):
        check_lengths(mel, torch.tensor([3, 11]))
    with pytest.raises(ValueError, match=r"1\.\.M_max"):
        check_lengths(mel, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="lengths"):
        check_lengths(mel, torch.tensor([3]))
    with pytest.raises(ValueError, match="lengths"):
        check_lengths(mel[0], torch.tensor([3]))


@pytest.mark.parametrize("width", [1, 2, 3, 9])
def test_conv2d_bf16_safe_is_right_for_narrow_cpu_inputs(width: int) -> None:
    """torch's CPU bf16 Conv2d (k3 s2 p1) gets inputs < 3 frames wide wrong (O(1) errors up to NaN, torch 2.13);
    conv2d_bf16_safe runs those in float32, so it stays within bf16 rounding of the float32 conv."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, 2, padding=1)
    perturb_(conv, seed=2)
    low = copy.deepcopy(conv).to(torch.bfloat16)
    x = torch.randn(4, 8, 16, width)
    with torch.inference_mode():
        reference = conv(x)
        ours = conv2d_bf16_safe(low, x.bfloat16())
        torchs = low(x.bfloat16())
    tolerance = BF16_REL_TOLERANCE * reference.abs().max()
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    assert (ours.float() - reference).abs().max() <= tolerance
    if width >= packed.BF16_CPU_CONV_MIN_WIDTH:
        assert torch.equal(ours, torchs)  # wide enough: torch's own conv, untouched
    else:  # recorded, not asserted: a torch release may fix it
        wrong = not torch.isfinite(torchs).all() or (torchs.float() - reference).abs().max() > tolerance
        print(f"torch's own CPU bf16 conv on a {width}-frame input: {'wrong' if wrong else 'right'}")
    with torch.inference_mode():
        assert torch.equal(conv2d_bf16_safe(conv, x), conv(x))  # float32 passes straight through
