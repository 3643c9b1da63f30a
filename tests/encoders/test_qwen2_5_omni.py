"""Qwen2.5-Omni audio tower: its length and FLOP rules, and the packed forward against HF's own tower.

Every check here is against HF's code on the same weights: ``_get_feat_extract_output_lengths``
for the rule, and HF's batched path (``get_audio_features``, :meth:`reference_forward`) for the
packed forward on config variants (a bigger tower, 10-frame chunks whose pool pairs straddle
chunk edges), every attention kernel, bf16/fp16, gradients and activation checkpointing. What
every family shares (loading, oracle, lengths, padded batches, FLOPs vs torch) is in
``test_families.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.batches import random_padded_batch
from helpers.checkpoints import perturb_, tiny_audio_config
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

import contaudio.encoders.qwen2_5_omni as qwen2_5_omni
from contaudio.encoders import get_family, packed
from contaudio.encoders.qwen2_5_omni import packed_forward, qwen2_5_omni_flops, qwen2_5_omni_rows

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("qwen2_5_omni")
FP32_TOLERANCE = 1e-4  # max abs, packed vs HF, float32
LOW_PRECISION_FACTOR = 1.1  # packed bf16/fp16 error vs fp32 may be at most 1.1x HF's own (measured: 1.00)
GRAD_TOLERANCE = 1e-7  # float64 gradients, relative to the largest entry (>= 1); eager's fp32 softmax: 1e-9
# 1..2 frames give no row; 3 the first; 199/200/201 and 399/400/401 straddle the 200-frame chunk edge
LENGTHS = [3, 1, 2, 5, 199, 200, 201, 399, 400, 401, 450, 601]
BIGGER = {"d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "encoder_layers": 3, "output_dim": 40}
ODD_CHUNKS = {"n_window": 5}  # 10-frame chunks of 5 rows: pool pairs straddle chunk edges
CONFIGS = {"tiny": {}, "bigger": BIGGER, "odd-chunks": ODD_CHUNKS}
ATTN = ("sdpa", "eager")
ONE_PASS = 10**9  # CPU_ROWS_PER_PASS that keeps any test batch in one pass through the stack
UNREAD = {"audio_bos_eos_token.weight"}  # not part of the tower's forward, in HF either


def build(attn_implementation: str, overrides: dict, dtype: torch.dtype = torch.float32) -> Qwen2_5OmniAudioEncoder:
    """A random Qwen2.5-Omni tower from the tiny card's config with ``overrides`` (seeded, biases non-zero)."""
    config = Qwen2_5OmniAudioEncoderConfig(**{**tiny_audio_config(), **overrides})
    torch.manual_seed(0)
    encoder = Qwen2_5OmniAudioEncoder._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    perturb_(encoder, seed=5)
    return encoder.eval()


def hf(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's own batched path: ``Qwen2_5OmniThinkerModel.get_audio_features`` on the padded batch."""
    return FAMILY.reference_forward(encoder, mel, lengths)


def errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs, rms) error of ``ours`` against the float32 ``ref``."""
    diff = ours.float() - ref
    return diff.abs().max().item(), diff.square().mean().sqrt().item()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return random_padded_batch(LENGTHS)


def test_rule_equals_hf_output_lengths() -> None:
    """Same numbers as HF's own _get_feat_extract_output_lengths for every M in 1..5000."""
    ms = torch.arange(1, 5001)
    _, hf_rows = build("sdpa", {})._get_feat_extract_output_lengths(ms)
    assert torch.equal(qwen2_5_omni_rows(ms), hf_rows)
    assert FAMILY.rows is qwen2_5_omni_rows


@pytest.mark.parametrize("m", [1, 2, 3, 4, 199, 200, 201, 399, 400, 401, 30000, 30001])
def test_int_and_tensor_rules_agree(m: int) -> None:
    assert qwen2_5_omni_rows(m) == int(qwen2_5_omni_rows(torch.tensor([m]))[0])


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", CONFIGS)
def test_fp32_matches_hf(batch, attn: str, name: str) -> None:
    mel, lengths = batch
    encoder = build(attn, CONFIGS[name])
    with torch.inference_mode():
        ours = packed_forward(encoder, mel, lengths)
        ref = hf(encoder, mel, lengths)
    assert ours.shape == ref.shape == (int(qwen2_5_omni_rows(lengths).sum()), encoder.config.output_dim)
    assert (ours - ref).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("lengths", [[800], [400, 200, 600], [17]])
def test_single_clips_and_all_full_chunks_match_hf(lengths: list[int]) -> None:
    """No key mask at all when every chunk is full (lengths multiple of 200), and single clips."""
    encoder = build("sdpa", {})
    mel, lengths_t = random_padded_batch(lengths, extra=0)
    with torch.inference_mode():
        diff = packed_forward(encoder, mel, lengths_t) - hf(encoder, mel, lengths_t)
    assert diff.abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_buckets", "eager"])
def test_every_kernel_matches_hf(batch, monkeypatch, kernel: str) -> None:
    """Including the CUDA grid kernel ("sdpa"), forced here on CPU."""
    monkeypatch.setattr(qwen2_5_omni, "attention_kernel", lambda *_: kernel)
    mel, lengths = batch
    encoder = build("sdpa", BIGGER)
    with torch.inference_mode():
        assert (packed_forward(encoder, mel, lengths) - hf(encoder, mel, lengths)).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attn", ATTN)
def test_low_precision_error_no_worse_than_hf(batch, attn: str, dtype: torch.dtype) -> None:
    mel, lengths = batch
    encoder = build(attn, BIGGER)
    low = copy.deepcopy(encoder).to(dtype)
    with torch.inference_mode():
        ref = hf(encoder, mel, lengths)
        ours = errors(packed_forward(low, mel.to(dtype), lengths), ref)
        theirs = errors(hf(low, mel.to(dtype), lengths), ref)
    assert theirs[0] > 0  # the low-precision run really is low precision
    assert ours[0] <= LOW_PRECISION_FACTOR * theirs[0]
    assert ours[1] <= LOW_PRECISION_FACTOR * theirs[1]


def loss_and_grads(forward, encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor):
    """Backprop a fixed random projection of the output; returns (param grads by name, mel grad)."""
    encoder.zero_grad(set_to_none=True)
    mel = mel.clone().requires_grad_(True)
    out = forward(encoder, mel, lengths)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    grads = {name: p.grad for name, p in encoder.named_parameters() if p.grad is not None}
    return grads, mel.grad


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn", ATTN)
def test_gradients_match_hf(batch, monkeypatch, attn: str, checkpointing: bool) -> None:
    """In float64, where summation order is invisible: a gradient bug shows as O(1), not as rounding."""
    mel, lengths = batch
    mel = mel.double()
    encoder = build(attn, {}).double()
    if checkpointing:
        # gradient_checkpointing_enable: its name before transformers 5.23 (a deprecated alias since)
        getattr(encoder, "activation_checkpointing_enable", encoder.gradient_checkpointing_enable)()
        encoder.train()  # dropout is 0 in the card, so train mode changes nothing else
    monkeypatch.setattr(packed, "CPU_ROWS_PER_PASS", ONE_PASS)  # one pass: each layer runs once per forward
    layer_calls = []
    layer_forward = packed.encoder_layer_forward
    monkeypatch.setattr(
        packed, "encoder_layer_forward", lambda *a, **k: layer_calls.append(1) or layer_forward(*a, **k)
    )
    ours, ours_mel = loss_and_grads(packed_forward, encoder, mel, lengths)
    recomputed = 2 if checkpointing else 1  # checkpointed layers run again in backward
    assert len(layer_calls) == recomputed * encoder.config.encoder_layers
    theirs, theirs_mel = loss_and_grads(hf, encoder, mel, lengths)
    assert set(ours) == set(theirs) == {name for name, _ in encoder.named_parameters()} - UNREAD
    for name, grad in {**ours, "mel": ours_mel}.items():
        reference = theirs_mel if name == "mel" else theirs[name]
        assert torch.isfinite(grad).all(), name
        assert (grad - reference).abs().max() <= GRAD_TOLERANCE * max(1.0, reference.abs().max().item()), name
    assert ours_mel[~(torch.arange(mel.shape[1]) < lengths[:, None])].abs().max() == 0  # padding gets no gradient


def test_flops_grow_with_a_tail_chunk_and_add_over_clips() -> None:
    config = tiny_audio_config()
    assert qwen2_5_omni_flops(config, [200]) < qwen2_5_omni_flops(config, [201]) < qwen2_5_omni_flops(config, [400])
    assert qwen2_5_omni_flops(config, [400, 3]) == qwen2_5_omni_flops(config, [400]) + qwen2_5_omni_flops(config, [3])
    assert qwen2_5_omni_flops(Qwen2_5OmniAudioEncoderConfig(**config), torch.tensor([450])) == qwen2_5_omni_flops(
        config, [450]
    )  # HF config objects and tensors work too
    assert FAMILY.flops(config, [450, 7]) == qwen2_5_omni_flops(config, [450, 7])
