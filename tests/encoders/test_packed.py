"""Packed chunk attention: parity with HF's own Qwen2.5-Omni tower forward on the same weights."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_QWEN3_OMNI, card_encoder_config, perturb_, tiny_audio_config
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as hf_modeling
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as qwen3_modeling
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from contaudio.encoders import get_family, packed
from contaudio.encoders.packed import (
    WindowLayout,
    attention_kernel,
    chunk_frames_per_clip,
    flash_attn_available,
    pool_pair_starts,
    qwen2_5_omni_packed_forward,
    qwen3_omni_packed_forward,
    qwen3_window_rows,
    sort_windows,
)
from contaudio.encoders.qwen2_5_omni import hf_forward
from contaudio.encoders.qwen3_omni import hf_forward_per_clip
from contaudio.lengths import qwen2_5_omni_rows, qwen3_omni_rows

FP32_TOLERANCE = 1e-4  # max abs, packed vs HF, float32
LOW_PRECISION_FACTOR = 1.1  # packed bf16/fp16 error vs fp32 may be at most 1.1x HF's own (measured: 1.00)
GRAD_TOLERANCE = 1e-5  # max abs, float32 gradients
PADDING_GARBAGE = 1e3  # value written past each clip's end in the padded batch
# 1..2 frames give no row; 3 the first; 199/200/201 and 399/400/401 straddle the 200-frame chunk edge
LENGTHS = [3, 1, 2, 5, 199, 200, 201, 399, 400, 401, 450, 601]
BIGGER = {"d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "encoder_layers": 3, "output_dim": 40}
ODD_CHUNKS = {"n_window": 5}  # 10-frame chunks of 5 rows: pool pairs straddle chunk edges
CONFIGS = {"tiny": {}, "bigger": BIGGER, "odd-chunks": ODD_CHUNKS}
ATTN = ("sdpa", "eager")
ONE_PASS = 10**9  # CPU_ROWS_PER_PASS that keeps any test batch in one pass through the stack


def build(attn_implementation: str, overrides: dict, dtype: torch.dtype = torch.float32) -> Qwen2_5OmniAudioEncoder:
    """A random Qwen2.5-Omni tower from the tiny card's config with ``overrides`` (seeded)."""
    config = Qwen2_5OmniAudioEncoderConfig(**{**tiny_audio_config(), **overrides})
    torch.manual_seed(0)
    encoder = Qwen2_5OmniAudioEncoder._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return encoder.eval()


def padded_batch(lengths: list[int], extra: int = 7, n_mels: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Random mel ``[B, max + extra, n_mels]`` with loud garbage past every clip's end."""
    generator = torch.Generator().manual_seed(0)
    lengths_t = torch.tensor(lengths)
    mel = torch.randn(len(lengths), max(lengths) + extra, n_mels, generator=generator)
    past_end = torch.arange(mel.shape[1]) >= lengths_t[:, None]
    return mel.masked_fill(past_end[:, :, None], PADDING_GARBAGE), lengths_t


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch(LENGTHS)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", CONFIGS)
def test_fp32_matches_hf(batch, attn: str, name: str) -> None:
    mel, lengths = batch
    encoder = build(attn, CONFIGS[name])
    with torch.inference_mode():
        ours = qwen2_5_omni_packed_forward(encoder, mel, lengths)
        ref = hf_forward(encoder, mel, lengths)
    assert ours.shape == ref.shape == (int(qwen2_5_omni_rows(lengths).sum()), encoder.config.output_dim)
    assert (ours - ref).abs().max() <= FP32_TOLERANCE


def test_single_clip_and_all_full_chunks_match_hf() -> None:
    """No key mask at all when every chunk is full (lengths multiple of 200)."""
    encoder = build("sdpa", {})
    for lengths in ([800], [400, 200, 600], [17]):
        mel, lengths_t = padded_batch(lengths, extra=0)
        with torch.inference_mode():
            diff = qwen2_5_omni_packed_forward(encoder, mel, lengths_t) - hf_forward(encoder, mel, lengths_t)
        assert diff.abs().max() <= FP32_TOLERANCE


def errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs, rms) error of ``ours`` against the float32 ``ref``."""
    diff = ours.float() - ref
    return diff.abs().max().item(), diff.square().mean().sqrt().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attn", ATTN)
def test_low_precision_error_no_worse_than_hf(batch, attn: str, dtype: torch.dtype) -> None:
    mel, lengths = batch
    encoder = build(attn, BIGGER)
    low = copy.deepcopy(encoder).to(dtype)
    with torch.inference_mode():
        ref = hf_forward(encoder, mel, lengths)
        ours = errors(qwen2_5_omni_packed_forward(low, mel.to(dtype), lengths), ref)
        theirs = errors(hf_forward(low, mel.to(dtype), lengths), ref)
    assert theirs[0] > 0  # the low-precision run really is low precision
    assert ours[0] <= LOW_PRECISION_FACTOR * theirs[0]
    assert ours[1] <= LOW_PRECISION_FACTOR * theirs[1]


def loss_and_grads(forward, encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor):
    """Backprop a fixed random projection of the output; returns (param grads by name, mel grad)."""
    encoder.zero_grad(set_to_none=True)
    mel = mel.clone().requires_grad_(True)
    out = forward(encoder, mel, lengths)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    grads = {name: p.grad for name, p in encoder.named_parameters() if p.grad is not None}
    return grads, mel.grad


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn", ATTN)
def test_gradients_match_hf(batch, monkeypatch, attn: str, checkpointing: bool) -> None:
    mel, lengths = batch
    encoder = build(attn, {})
    if checkpointing:
        encoder.activation_checkpointing_enable()
        encoder.train()  # dropout is 0 in the card, so train mode changes nothing else
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", ONE_PASS)
    layer_calls = []
    layer_forward = packed.encoder_layer_forward
    monkeypatch.setattr(
        packed, "encoder_layer_forward", lambda *a, **k: layer_calls.append(1) or layer_forward(*a, **k)
    )
    ours, ours_mel = loss_and_grads(qwen2_5_omni_packed_forward, encoder, mel, lengths)
    recomputed = 2 if checkpointing else 1  # checkpointed layers run again in backward
    assert len(layer_calls) == recomputed * encoder.config.encoder_layers
    theirs, theirs_mel = loss_and_grads(hf_forward, encoder, mel, lengths)
    unused = {"audio_bos_eos_token.weight"}  # not part of the tower's forward, in HF either
    assert set(ours) == set(theirs) == {name for name, _ in encoder.named_parameters()} - unused
    for name, grad in ours.items():
        assert torch.isfinite(grad).all(), name
        assert (grad - theirs[name]).abs().max() <= GRAD_TOLERANCE, name
    assert (ours_mel - theirs_mel).abs().max() <= GRAD_TOLERANCE
    assert ours_mel[~(torch.arange(mel.shape[1]) < lengths[:, None])].abs().max() == 0  # padding gets no gradient


def test_one_attention_call_per_layer(batch, monkeypatch) -> None:
    """The CUDA "sdpa" kernel: all chunks go through ONE SDPA call per layer, with a [chunks, 1, 1, len] key mask."""
    mel, lengths = batch
    encoder = build("sdpa", {})
    monkeypatch.setattr(packed, "attention_kernel", lambda *_: "sdpa")
    masks = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.inference_mode():
        out = qwen2_5_omni_packed_forward(encoder, mel, lengths)
    num_chunks = len(chunk_frames_per_clip(lengths, 2 * encoder.n_window)[0])
    assert len(masks) == encoder.config.encoder_layers
    assert all(mask.shape == (num_chunks, 1, 1, encoder.n_window) and mask.dtype == torch.bool for mask in masks)
    assert torch.isfinite(out).all()


def test_cpu_runs_one_unmasked_call_per_window_length(batch, monkeypatch) -> None:
    """CPU default: windows sorted by length, one SDPA call per distinct length, no mask, no padding."""
    mel, lengths = batch
    encoder = build("sdpa", {})
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", ONE_PASS)
    assert attention_kernel(encoder.config, torch.device("cpu")) == "sdpa_buckets"
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, *args, **kwargs):
        calls.append((q.shape[2], kwargs.get("attn_mask")))
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.inference_mode():
        qwen2_5_omni_packed_forward(encoder, mel, lengths)
    window_rows = (chunk_frames_per_clip(lengths, 2 * encoder.n_window)[0] - 1) // 2 + 1
    distinct = len(window_rows.unique())
    assert len(calls) == distinct * encoder.config.encoder_layers
    assert all(mask is None for _, mask in calls)
    assert [length for length, _ in calls[:distinct]] == sorted(window_rows.unique().tolist(), reverse=True)


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_buckets", "eager"])
def test_every_kernel_matches_hf_for_both_towers(batch, monkeypatch, kernel: str) -> None:
    monkeypatch.setattr(packed, "attention_kernel", lambda *_: kernel)
    mel, lengths = batch
    encoder = build("sdpa", BIGGER)
    qwen3 = build_qwen3("sdpa", QWEN3_WINDOWS["bigger"])
    qwen3_mel, qwen3_lengths = padded_batch(QWEN3_LENGTHS)
    with torch.inference_mode():
        assert (qwen2_5_omni_packed_forward(encoder, mel, lengths) - hf_forward(encoder, mel, lengths)).abs().max() <= (
            FP32_TOLERANCE
        )
        ours = qwen3_omni_packed_forward(qwen3, qwen3_mel, qwen3_lengths)
        assert (ours - hf_forward_per_clip(qwen3, qwen3_mel, qwen3_lengths)).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("rows_per_pass", [1, 60, ONE_PASS])
def test_cpu_passes_of_whole_windows_change_nothing(batch, monkeypatch, rows_per_pass: int) -> None:
    """The stack runs in passes of whole windows on CPU; any pass size gives HF's values and gradients."""
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", rows_per_pass)
    mel, lengths = batch
    encoder = build("sdpa", {})
    ours, ours_mel = loss_and_grads(qwen2_5_omni_packed_forward, encoder, mel, lengths)
    theirs, theirs_mel = loss_and_grads(hf_forward, encoder, mel, lengths)
    for name, grad in ours.items():
        assert (grad - theirs[name]).abs().max() <= GRAD_TOLERANCE, name
    assert (ours_mel - theirs_mel).abs().max() <= GRAD_TOLERANCE
    with torch.inference_mode():
        diff = qwen2_5_omni_packed_forward(encoder, mel, lengths) - hf_forward(encoder, mel, lengths)
    assert diff.abs().max() <= FP32_TOLERANCE


def test_sorted_windows_round_trip() -> None:
    window_rows = torch.tensor([5, 2, 5, 1, 2])
    rows = torch.arange(15.0)
    sorted_rows, index = sort_windows(window_rows)
    assert sorted_rows.tolist() == [5, 5, 2, 2, 1]
    assert rows[index].tolist() == [*range(0, 5), *range(7, 12), 5, 6, 13, 14, 12]
    assert torch.equal(rows[index][torch.argsort(index)], rows)


def test_family_uses_packed_forward_and_keeps_hf_reference(tiny_io, batch) -> None:
    family = get_family("qwen2_5_omni")
    assert family.forward is qwen2_5_omni_packed_forward
    assert family.reference_forward is hf_forward
    mel, lengths = batch
    with torch.inference_mode():
        feats = tiny_io.encode_batch(mel, lengths)
        ref = hf_forward(tiny_io.encoder, mel, lengths).split(qwen2_5_omni_rows(lengths).tolist())
    for ours, theirs in zip(feats, ref, strict=True):
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, rtol=0.0, atol=FP32_TOLERANCE)


def test_chunks_and_pool_pairs_match_hf_helpers() -> None:
    lengths = torch.tensor(LENGTHS)
    chunk_lengths, _, _ = chunk_frames_per_clip(lengths, 200)
    mel = torch.zeros(128, int(lengths.sum()))
    _, hf_chunk_lengths = hf_modeling.chunk_and_pad_features(mel, lengths, n_window=100)
    assert chunk_lengths.tolist() == hf_chunk_lengths.tolist()
    rows = (lengths - 1) // 2 + 1
    assert pool_pair_starts(rows).tolist() == hf_modeling.get_pool_indices(lengths).tolist()


def test_window_layout_round_trip() -> None:
    layout = WindowLayout.from_window_rows(torch.tensor([3, 1, 2]), "cpu")
    rows = torch.arange(6.0)[:, None]  # [N, 1]
    grid = layout.to_grid(rows)
    assert grid[:, :, 0].tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert layout.key_mask.shape == (3, 1, 1, 3)
    assert torch.equal(layout.to_rows(grid), rows)
    full = WindowLayout.from_window_rows(torch.tensor([2, 2]), "cpu")
    assert full.key_mask is None and torch.equal(full.to_rows(full.to_grid(rows[:4])), rows[:4])
    with pytest.raises(ValueError, match="counts >= 1"):
        WindowLayout.from_window_rows(torch.tensor([2, 0]), "cpu")


def test_bad_lengths_are_rejected() -> None:
    encoder = build("sdpa", {})
    mel = torch.zeros(2, 10, 128)
    with pytest.raises(ValueError, match=r"1\.\.M_max"):
        qwen2_5_omni_packed_forward(encoder, mel, torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="lengths"):
        qwen2_5_omni_packed_forward(encoder, mel, torch.tensor([3]))


def test_kernel_choice() -> None:
    cpu = torch.device("cpu")
    assert attention_kernel(build("eager", {}).config, cpu) == "eager"
    assert attention_kernel(build("sdpa", {}).config, cpu) == "sdpa_buckets"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_cuda_bf16_no_worse_than_hf(attn: str) -> None:
    if attn == "flash_attention_2" and not flash_attn_available():
        pytest.skip("flash-attn is not installed")
    mel, lengths = padded_batch(LENGTHS)
    reference = build("sdpa", BIGGER).cuda()
    encoder = build(attn, BIGGER, dtype=torch.bfloat16).cuda()
    encoder.load_state_dict(reference.state_dict())
    assert attention_kernel(encoder.config, torch.device("cuda")) == {"flash_attention_2": "flash"}.get(attn, attn)
    mel = mel.cuda()
    with torch.inference_mode():
        ref = hf_forward(reference, mel, lengths)
        ours = errors(qwen2_5_omni_packed_forward(encoder, mel.bfloat16(), lengths), ref)
        theirs = errors(hf_forward(encoder, mel.bfloat16(), lengths), ref)
    assert ours[0] <= LOW_PRECISION_FACTOR * theirs[0]
    assert ours[1] <= LOW_PRECISION_FACTOR * theirs[1]


def test_docstring_examples() -> None:
    assert doctest.testmod(packed).failed == 0


# -------------------------------------------------------------------- Qwen3-Omni
# < 100 frames (one unpadded chunk alone), chunk edges, and clips across several attention windows
QWEN3_LENGTHS = [1, 2, 37, 99, 100, 101, 250, 37, 401, 1013]
QWEN3_WINDOWS = {"2-chunk windows": {"n_window_infer": 200}, "1-chunk windows": {"n_window_infer": 100},
                 "bigger": {"d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "encoder_layers": 3,
                            "n_window_infer": 400}}  # fmt: skip


def build_qwen3(attn_implementation: str, overrides: dict) -> Qwen3OmniMoeAudioEncoder:
    """A random Qwen3-Omni tower from the tiny card's config; weights perturbed so biases are non-zero
    (with zero biases the conv padding leak that decides the one-clip result is invisible)."""
    config = Qwen3OmniMoeAudioEncoderConfig(**{**card_encoder_config(TINY_QWEN3_OMNI), **overrides})
    torch.manual_seed(0)
    encoder = Qwen3OmniMoeAudioEncoder._from_config(config, attn_implementation=attn_implementation)
    perturb_(encoder, seed=5)
    return encoder.eval()


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", QWEN3_WINDOWS)
def test_qwen3_packed_matches_hf_one_clip_at_a_time(attn: str, name: str) -> None:
    encoder = build_qwen3(attn, QWEN3_WINDOWS[name])
    mel, lengths = padded_batch(QWEN3_LENGTHS)
    with torch.inference_mode():
        ours = qwen3_omni_packed_forward(encoder, mel, lengths)
        ref = hf_forward_per_clip(encoder, mel, lengths)
    assert ours.shape == ref.shape == (int(qwen3_omni_rows(lengths).sum()), encoder.config.output_dim)
    assert (ours - ref).abs().max() <= FP32_TOLERANCE


def test_qwen3_one_attention_call_per_layer(monkeypatch) -> None:
    encoder = build_qwen3("sdpa", {})
    monkeypatch.setattr(packed, "attention_kernel", lambda *_: "sdpa")  # the CUDA path
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    mel, lengths = padded_batch(QWEN3_LENGTHS)
    with torch.inference_mode():
        qwen3_omni_packed_forward(encoder, mel, lengths)
    assert len(calls) == encoder.config.encoder_layers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_qwen3_low_precision_error_no_worse_than_hf(dtype: torch.dtype) -> None:
    """Clips of >= 9 frames: below that HF's own bf16 forward is garbage on CPU (next test)."""
    encoder = build_qwen3("sdpa", QWEN3_WINDOWS["bigger"])
    low = copy.deepcopy(encoder).to(dtype)
    mel, lengths = padded_batch([n for n in QWEN3_LENGTHS if n >= NARROW_CHUNK_FRAMES])
    with torch.inference_mode():
        ref = hf_forward_per_clip(encoder, mel, lengths)
        ours = errors(qwen3_omni_packed_forward(low, mel.to(dtype), lengths), ref)
        theirs = errors(hf_forward_per_clip(low, mel.to(dtype), lengths), ref)
    assert theirs[0] > 0
    assert ours[0] <= LOW_PRECISION_FACTOR * theirs[0]
    assert ours[1] <= LOW_PRECISION_FACTOR * theirs[1]


NARROW_CHUNK_FRAMES = 9  # a chunk this wide keeps every conv's input >= 3 frames (9 -> 5 -> 3)


def test_qwen3_bf16_on_cpu_is_right_for_clips_of_a_few_frames() -> None:
    """torch's CPU bf16 Conv2d gets inputs < 3 frames wide wrong; HF inherits it for clips of 1..8 frames.
    Ours runs those convs in float32: every clip stays within bf16 error of the fp32 result."""
    encoder = build_qwen3("sdpa", QWEN3_WINDOWS["bigger"])
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    tiny = list(range(1, NARROW_CHUNK_FRAMES + 3))
    mel, lengths = padded_batch(tiny)
    with torch.inference_mode():
        ref = hf_forward_per_clip(encoder, mel, lengths)
        ours = qwen3_omni_packed_forward(low, mel.bfloat16(), lengths).float()
        long_mel, long_lengths = padded_batch([n for n in QWEN3_LENGTHS if n >= NARROW_CHUNK_FRAMES])
        long_error = errors(qwen3_omni_packed_forward(low, long_mel.bfloat16(), long_lengths),
                            hf_forward_per_clip(encoder, long_mel, long_lengths))[0]  # fmt: skip
        hf_low = hf_forward_per_clip(low, mel.bfloat16(), lengths).float()
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= 2 * long_error  # as close as bf16 gets on ordinary clips
    hf_wrong = not torch.isfinite(hf_low).all() or (hf_low - ref).abs().max() > 2 * long_error
    print(f"HF's own bf16 forward on clips of 1..{tiny[-1]} frames: {'wrong' if hf_wrong else 'right'}")


def test_qwen3_gradients_match_hf() -> None:
    encoder = build_qwen3("sdpa", {})
    mel, lengths = padded_batch(QWEN3_LENGTHS)
    ours, ours_mel = loss_and_grads(qwen3_omni_packed_forward, encoder, mel, lengths)
    theirs, theirs_mel = loss_and_grads(hf_forward_per_clip, encoder, mel, lengths)
    assert set(ours) == set(theirs) == {name for name, _ in encoder.named_parameters()}
    for name, grad in {**ours, "mel": ours_mel}.items():  # fp32 sums over many rows: relative to the largest entry
        reference = theirs_mel if name == "mel" else theirs[name]
        assert (grad - reference).abs().max() <= GRAD_TOLERANCE * max(1.0, reference.abs().max().item()), name


def test_qwen3_helpers_match_hf() -> None:
    lengths = torch.tensor(QWEN3_LENGTHS)
    frames, _, _ = chunk_frames_per_clip(lengths, 100)
    _, hf_chunk_lengths = qwen3_modeling.chunk_and_pad_features(torch.zeros(128, int(lengths.sum())), lengths, 50)
    assert frames.tolist() == hf_chunk_lengths.tolist()
    assert torch.equal(qwen3_omni_rows(frames), qwen3_modeling._get_feat_extract_output_lengths(frames))
    for length in QWEN3_LENGTHS:  # HF's windows for the clip alone
        one = torch.tensor([length])
        hf_frames = qwen3_modeling.chunk_and_pad_features(torch.zeros(128, length), one, 50)[1]
        hf_cu = qwen3_modeling.get_audio_cu_seqlens(hf_frames, one, 200, 50)
        ours = qwen3_window_rows(qwen3_omni_rows(one), 26)  # 13 rows per chunk * 200 / 100
        assert ours.tolist() == hf_cu.diff().tolist(), length
