"""Qwen2.5-Omni audio tower: its length and FLOP rules, and the packed forward against HF's own tower.

Every check here is against HF's code on the same weights: ``_get_feat_extract_output_lengths``
for the rule, and HF's batched path (``get_audio_features``, :meth:`reference_forward`) for the
packed forward on config variants (a bigger tower, 10-frame chunks whose pool pairs straddle
chunk edges), every attention kernel, bf16/fp16, gradients and activation checkpointing. What
every family shares (loading, oracle, lengths, padded batches, FLOPs vs torch) is in
``test_families.py``.

The placeholders ``Qwen2_5OmniProcessor`` itself writes for a clip alone (built for text and audio by
:func:`contaudio.encoders.processors.audio_only`) equal find_length, preprocess's T and encode_batch's rows for many
N, and that check fails when either side counts otherwise.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import padded_batch, random_padded_batch
from helpers.checkpoints import TINY_QWEN_OMNI, card_extractor, perturb_, tiny_audio_config
from transformers import Qwen2_5OmniProcessor
from transformers.models.qwen2_5_omni import processing_qwen2_5_omni
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

import contaudio.encoders.qwen2_5_omni as qwen2_5_omni
from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family, packed
from contaudio.encoders.oracle import extract_max_length
from contaudio.encoders.processors import audio_only
from contaudio.encoders.qwen2_5_omni import packed_forward, qwen2_5_omni_flops, qwen2_5_omni_rows
from experiments.mutations import rows_off_by_one

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


# ------------------------------------------------------------------ the placeholders Qwen2_5OmniProcessor writes
HOP = 160
SR = 16000
PADDING_EXTRA = 9  # frames past the longest clip of a batch
# 1-2 frames (0 rows), the first rows, the 200-frame chunk edges (positions restart), 30 s, and random N up to 60 s
COUNT_HOPS = (1, 2, 3, 4, 5, 199, 200, 201, 399, 400, 401, 3000)
COUNT_SAMPLES = sorted({1, *[k * HOP + d for k in COUNT_HOPS for d in (-1, 0, 1)],
                        *np.random.default_rng(7).integers(1, 60 * SR, size=4).tolist()})  # fmt: skip
LONGER_THAN_THE_PROCESSOR = 300 * SR + 16001  # past the extractor's n_samples (300 s), which the processor truncates to


@pytest.fixture(scope="module")
def extractor():
    """HF's own extractor, configured as the tiny card says."""
    return card_extractor(TINY_QWEN_OMNI)


def count_mismatches(io: ContinuousAudioIO, extractor, sizes: list[int]) -> list[tuple]:
    """Each N where the placeholders of HF's processor (the family's ``hf_placeholders``), find_length, preprocess's T
    and encode_batch's rows (one padded batch of all the clips) disagree: ``(N, {name: count})``."""
    rng = np.random.default_rng(1)
    wavs = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in sizes]
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = padded_batch([m for _, m in processed], extra=PADDING_EXTRA, fill=1.0)
    with torch.inference_mode():
        outs = io.encode_batch(mel, lengths)
    found = []
    for n, wav, (rows, _), out in zip(sizes, wavs, processed, outs, strict=True):
        counts = {"placeholders": io.family.hf_placeholders(extractor, wav), "find_length": io.find_length(n),
                  "preprocess": rows, "encode_batch": out.shape[0]}  # fmt: skip
        if len(set(counts.values())) > 1:
            found.append((n, counts))
    return found


def test_placeholders_equal_every_count_for_many_n(tiny_io, extractor) -> None:
    assert tiny_io.returns == "lm" and tiny_io.family is FAMILY  # the tower's rows are the LM's
    assert not count_mismatches(tiny_io, extractor, COUNT_SAMPLES)
    assert [tiny_io.find_length(n) for n in (1, 2 * HOP, 2 * HOP + 1)] == [0, 0, 1]


def test_a_clip_longer_than_300_s_is_counted_whole(tiny_io, extractor) -> None:
    """The oracle's call (padded past the end): the whole clip's count; the processor's default would truncate."""
    wav = np.zeros(LONGER_THAN_THE_PROCESSOR, np.float32)
    assert FAMILY.hf_placeholders(extractor, wav) == tiny_io.find_length(len(wav)) == 7525
    processor = qwen2_5_omni.qwen2_5_omni_processor(extractor)
    out = processor(text=processor.audio_token, audio=wav, return_tensors="pt")  # its defaults: cut at 300 s
    assert int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)).sum()) == 7500


def test_the_oracle_keeps_the_processors_count(tiny_io, extractor, rng) -> None:
    with torch.inference_mode():
        answer = FAMILY.oracle(tiny_io.encoder, extractor, noise(rng, 5 * SR + 77))
        too_short = FAMILY.oracle(tiny_io.encoder, extractor, noise(rng, 2 * HOP))
    assert answer.placeholders == answer.count == tiny_io.find_length(5 * SR + 77) == 125
    if too_short.error is None:  # 2 frames: no row, no placeholder (HF's tower raised here before transformers 5.25)
        assert too_short.count == too_short.placeholders == tiny_io.find_length(2 * HOP) == 0
    else:
        assert too_short.placeholders is None  # counted only where HF's model path answered


@pytest.mark.skipif(
    not hasattr(processing_qwen2_5_omni, "_get_feat_extract_output_lengths"),
    reason="the installed transformers' processor counts inline (5.14): no helper to inject the fault into",
)
def test_the_count_check_fails_when_hfs_processor_counts_otherwise(tiny_io, extractor, monkeypatch) -> None:
    sizes = [3 * HOP + 1, 16000, 32001]
    count = processing_qwen2_5_omni._get_feat_extract_output_lengths
    monkeypatch.setattr(processing_qwen2_5_omni, "_get_feat_extract_output_lengths", lambda n: count(n) + 1)
    assert [n for n, _ in count_mismatches(tiny_io, extractor, sizes)] == sizes


def test_the_count_check_fails_when_ours_counts_otherwise(tiny_io, extractor, monkeypatch) -> None:
    """One row more, in the rule and the forward alike (contaudio agrees with itself; only HF's count tells)."""
    sizes = [3 * HOP + 1, 16000, 32001]
    for name, method in rows_off_by_one(tiny_io.family).items():
        monkeypatch.setattr(tiny_io.family, name, method)
    assert [n for n, _ in count_mismatches(tiny_io, extractor, sizes)] == sizes


# ------------------------------------------------------------------ audio_only: HF's processor without vision
def test_audio_only_is_hfs_processor_with_hfs_audio_path(extractor, rng) -> None:
    processor = qwen2_5_omni.qwen2_5_omni_processor(extractor)
    assert isinstance(processor, Qwen2_5OmniProcessor) and processor.feature_extractor is extractor
    wav = noise(rng, 16001)
    out = processor(text=processor.audio_token, audio=wav, return_tensors="pt")
    features, frames = extract_max_length(extractor, wav)  # the extractor as the processor documents its call
    assert torch.equal(out["input_features"], features) and int(out["feature_attention_mask"].sum()) == frames


def test_audio_only_refuses_images_and_keeps_hfs_other_checks(extractor) -> None:
    processor = qwen2_5_omni.qwen2_5_omni_processor(extractor)
    with pytest.raises((AttributeError, ValueError), match="takes text and audio only"):
        processor(text=processor.image_token, images=[np.zeros((28, 28, 3), np.uint8)])
    assert "Qwen2_5OmniProcessor" in repr(processor)  # HF's serialisation (a deep copy) still works
    with pytest.raises(TypeError, match="feature_extractor"):  # HF's class check of every other argument stays
        audio_only(Qwen2_5OmniProcessor, "not an extractor", processor.tokenizer)

    class WithADecoderTokenizer(Qwen2_5OmniProcessor):
        def __init__(self, image_processor=None, video_processor=None, feature_extractor=None, tokenizer=None,
                     decoder_tokenizer=None) -> None:  # fmt: skip
            super().__init__(image_processor, video_processor, feature_extractor, tokenizer)

    with pytest.raises(ValueError, match="'decoder_tokenizer'"):
        audio_only(WithADecoderTokenizer, extractor, processor.tokenizer)
