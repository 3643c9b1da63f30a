"""Qwen3-Omni audio tower: its length rule and chunking helpers, and the packed forward against HF's own tower.

The reference is HF's ``get_audio_features`` on each clip ALONE (:meth:`reference_forward` called
once per clip): HF's batched call leaks conv padding into clips shorter than one chunk, which is
shown here too. Checked against it: attention-window variants, every kernel, conv slicing,
bf16/fp16 (and the torch CPU bf16 narrow-conv bug ours works around), gradients; plus the
chunking check and loading from thinker-only and encoder-only exports. What every family shares
(loading, oracle, lengths, padded batches, FLOPs vs torch) is in ``test_families.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.batches import random_padded_batch
from helpers.checkpoints import (
    TINY_QWEN3_OMNI,
    assert_holds_tower,
    card_encoder_config,
    card_extractor,
    hf_audio_tower,
    perturb_,
    save_tiny_qwen3_omni,
)
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe, processing_qwen3_omni_moe
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

import contaudio.encoders.qwen3_omni as qwen3_omni
from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.packed import chunk_frames_per_clip
from contaudio.encoders.qwen3_omni import (
    CHUNK_FRAMES,
    packed_forward,
    qwen3_conv_widths,
    qwen3_omni_rows,
    qwen3_window_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("qwen3_omni")
ATOL = 1e-5  # fp32, same weights, same kernels: only summation order differs
LOW_PRECISION_FACTOR = 1.1  # packed bf16/fp16 error vs fp32 may be at most 1.1x HF's own
GRAD_TOLERANCE = 1e-10  # float64 gradients, relative to the largest entry (at least 1); measured 2e-14
NARROW_CHUNK_FRAMES = 9  # a chunk this wide keeps every conv's input >= 3 frames (9 -> 5 -> 3)
# < 100 frames (one unpadded chunk alone), chunk edges, and clips across several attention windows
LENGTHS = [1, 2, 37, 99, 100, 101, 250, 37, 401, 1013]
WINDOWS = {"2-chunk windows": {"n_window_infer": 200}, "1-chunk windows": {"n_window_infer": 100},
           "bigger": {"d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "encoder_layers": 3,
                      "n_window_infer": 400}}  # fmt: skip
ATTN = ("sdpa", "eager")


def build(attn_implementation: str, overrides: dict) -> Qwen3OmniMoeAudioEncoder:
    """A random Qwen3-Omni tower from the tiny card's config; weights perturbed so biases are non-zero
    (with zero biases the conv padding leak that decides the one-clip result is invisible)."""
    config = Qwen3OmniMoeAudioEncoderConfig(**{**card_encoder_config(TINY_QWEN3_OMNI), **overrides})
    torch.manual_seed(0)
    encoder = Qwen3OmniMoeAudioEncoder._from_config(config, attn_implementation=attn_implementation)
    perturb_(encoder, seed=5)
    return encoder.eval()


def hf_per_clip(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's ``get_audio_features`` on each clip alone, one call per clip: ``[sum rows, output_dim]``."""
    clips = [FAMILY.reference_forward(encoder, mel[i : i + 1, :n], lengths[i : i + 1]) for i, n in
             enumerate(lengths.tolist())]  # fmt: skip
    return torch.cat(clips)


def errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs, rms) error of ``ours`` against the float32 ``ref``."""
    diff = ours.float() - ref
    return diff.abs().max().item(), diff.square().mean().sqrt().item()


def test_rule_equals_hf_length_helpers() -> None:
    ms = torch.arange(0, 30001)
    assert torch.equal(qwen3_omni_rows(ms), modeling_qwen3_omni_moe._get_feat_extract_output_lengths(ms))
    assert torch.equal(qwen3_omni_rows(ms), processing_qwen3_omni_moe._get_feat_extract_output_lengths(ms))
    for m in (0, 1, 99, 100, 101, 200, 29999, 30000):
        assert qwen3_omni_rows(m) == int(qwen3_omni_rows(torch.tensor(m)))


def test_chunking_helpers_match_hf() -> None:
    """Chunk frames, rows per chunk, the width HF pads each chunk to and the attention windows, for each clip alone."""
    lengths = torch.tensor(LENGTHS)
    frames, clip_of_chunk, _ = chunk_frames_per_clip(lengths, CHUNK_FRAMES)
    _, hf_chunk_lengths = modeling_qwen3_omni_moe.chunk_and_pad_features(
        torch.zeros(128, int(lengths.sum())), lengths, CHUNK_FRAMES // 2
    )
    assert frames.tolist() == hf_chunk_lengths.tolist()
    assert torch.equal(qwen3_omni_rows(frames), modeling_qwen3_omni_moe._get_feat_extract_output_lengths(frames))
    widths = qwen3_conv_widths(lengths, clip_of_chunk, CHUNK_FRAMES)
    for i, length in enumerate(LENGTHS):  # HF's forward on the clip alone
        one = torch.tensor([length])
        padded, hf_frames = modeling_qwen3_omni_moe.chunk_and_pad_features(torch.zeros(128, length), one, 50)
        assert widths[clip_of_chunk == i].tolist() == [padded.shape[2]] * len(hf_frames), length
        hf_cu = modeling_qwen3_omni_moe.get_audio_cu_seqlens(hf_frames, one, 200, 50)
        ours = qwen3_window_rows(qwen3_omni_rows(one), 26)  # 13 rows per chunk * 200 / 100
        assert ours.tolist() == hf_cu.diff().tolist(), length


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", WINDOWS)
def test_packed_matches_hf_one_clip_at_a_time(attn: str, name: str) -> None:
    encoder = build(attn, WINDOWS[name])
    mel, lengths = random_padded_batch(LENGTHS)
    with torch.inference_mode():
        ours = packed_forward(encoder, mel, lengths)
        ref = hf_per_clip(encoder, mel, lengths)
    assert ours.shape == ref.shape == (int(qwen3_omni_rows(lengths).sum()), encoder.config.output_dim)
    assert (ours - ref).abs().max() <= ATOL


def test_grid_kernel_makes_one_attention_call_per_layer_and_matches_hf(monkeypatch) -> None:
    """The CUDA path (forced on CPU): the layers run ONCE over the packed rows of the whole batch."""
    encoder = build("sdpa", {})
    monkeypatch.setattr(qwen3_omni, "attention_kernel", lambda *_: "sdpa")
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    mel, lengths = random_padded_batch(LENGTHS)
    with torch.inference_mode():
        ours = packed_forward(encoder, mel, lengths)
    assert len(calls) == encoder.config.encoder_layers
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    with torch.inference_mode():
        assert (ours - hf_per_clip(encoder, mel, lengths)).abs().max() <= ATOL


def test_conv_stack_in_slices_changes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(qwen3_omni, "CPU_CONV_CHUNKS", 2)
    encoder = build("sdpa", {})
    mel, lengths = random_padded_batch(LENGTHS)
    with torch.inference_mode():
        assert (packed_forward(encoder, mel, lengths) - hf_per_clip(encoder, mel, lengths)).abs().max() <= ATOL


def test_hf_batched_call_leaks_padding_into_sub_second_clips_ours_does_not() -> None:
    """Why the packed forward pads each chunk as for its clip alone: in ONE HF call a < 100-frame clip sees
    the padding of the longer chunks (gelu(bias) between the convs), so its features depend on the batch.
    Clips with a full chunk are padded to 100 frames anyway: HF's batched call gives them as alone."""
    encoder = build("sdpa", {})
    mel, lengths = random_padded_batch([37, 250, 101])
    rows = qwen3_omni_rows(lengths).tolist()
    with torch.inference_mode():
        alone = hf_per_clip(encoder, mel, lengths).split(rows)
        hf_batched = FAMILY.reference_forward(encoder, mel, lengths).split(rows)  # HF's one call
        ours = packed_forward(encoder, mel, lengths).split(rows)
    assert (hf_batched[0] - alone[0]).abs().max() > 100 * ATOL
    for i in (1, 2):
        torch.testing.assert_close(hf_batched[i], alone[i], atol=ATOL, rtol=0)
    for ours_clip, alone_clip in zip(ours, alone, strict=True):
        torch.testing.assert_close(ours_clip, alone_clip, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("overrides", "message"), [({"n_window": 40}, "n_window=40"),
                                                    ({"n_window_infer": 150}, "n_window_infer=150")])  # fmt: skip
def test_other_chunking_is_refused(overrides: dict, message: str) -> None:
    """The length rule assumes 100-frame chunks and windows of whole chunks: anything else raises, not misleads."""
    encoder = build("sdpa", overrides)
    mel, lengths = random_padded_batch([250])
    for forward in (packed_forward, FAMILY.forward, FAMILY.reference_forward):
        with pytest.raises(ValueError, match=message):
            forward(encoder, mel, lengths)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_no_worse_than_hf(dtype: torch.dtype) -> None:
    """Clips of >= 9 frames: below that HF's own bf16 forward can be garbage on CPU (next test)."""
    encoder = build("sdpa", WINDOWS["bigger"])
    low = copy.deepcopy(encoder).to(dtype)
    mel, lengths = random_padded_batch([n for n in LENGTHS if n >= NARROW_CHUNK_FRAMES])
    with torch.inference_mode():
        ref = hf_per_clip(encoder, mel, lengths)
        ours = errors(packed_forward(low, mel.to(dtype), lengths), ref)
        theirs = errors(hf_per_clip(low, mel.to(dtype), lengths), ref)
    assert theirs[0] > 0
    assert ours[0] <= LOW_PRECISION_FACTOR * theirs[0]
    assert ours[1] <= LOW_PRECISION_FACTOR * theirs[1]


def test_bf16_on_cpu_is_right_for_clips_of_a_few_frames() -> None:
    """torch's CPU bf16 Conv2d can get inputs < 3 frames wide wrong; HF inherits it for clips of 1..8 frames.
    Ours runs those convs in float32: every clip stays within bf16 error of the fp32 result."""
    encoder = build("sdpa", WINDOWS["bigger"])
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    tiny = list(range(1, NARROW_CHUNK_FRAMES + 3))
    mel, lengths = random_padded_batch(tiny)
    long_mel, long_lengths = random_padded_batch([n for n in LENGTHS if n >= NARROW_CHUNK_FRAMES])
    with torch.inference_mode():
        ref = hf_per_clip(encoder, mel, lengths)
        ours = packed_forward(low, mel.bfloat16(), lengths).float()
        long_error = errors(packed_forward(low, long_mel.bfloat16(), long_lengths),
                            hf_per_clip(encoder, long_mel, long_lengths))[0]  # fmt: skip
        hf_low = hf_per_clip(low, mel.bfloat16(), lengths).float()
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= 2 * long_error  # as close as bf16 gets on ordinary clips
    hf_wrong = not torch.isfinite(hf_low).all() or (hf_low - ref).abs().max() > 2 * long_error
    print(f"HF's own bf16 forward on clips of 1..{tiny[-1]} frames: {'wrong' if hf_wrong else 'right'}")


def test_gradients_match_hf() -> None:
    """In float64, where summation order is invisible: a gradient bug shows as O(1), not as rounding."""
    encoder = build("sdpa", {}).double()
    mel, lengths = random_padded_batch(LENGTHS)
    mel = mel.double()
    results = []
    for forward in (packed_forward, hf_per_clip):
        encoder.zero_grad(set_to_none=True)
        leaf = mel.clone().requires_grad_(True)
        out = forward(encoder, leaf, lengths)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)).sum().backward()
        results.append(({name: p.grad for name, p in encoder.named_parameters() if p.grad is not None}, leaf.grad))
    (ours, ours_mel), (theirs, theirs_mel) = results
    assert set(ours) == set(theirs) == {name for name, _ in encoder.named_parameters()}
    for name, grad in {**ours, "mel": ours_mel}.items():
        reference = theirs_mel if name == "mel" else theirs[name]
        assert (grad - reference).abs().max() <= GRAD_TOLERANCE * max(1.0, reference.abs().max().item()), name
    assert ours_mel[~(torch.arange(mel.shape[1]) < lengths[:, None])].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("export", ["thinker", "audio_encoder"])
def test_loads_thinker_and_encoder_exports_from_one_file(tmp_path, tiny_qwen3_omni_checkpoint, export: str) -> None:
    if export == "thinker":
        tower = hf_audio_tower(save_tiny_qwen3_omni(tmp_path, thinker_only=True, max_shard_size="10GB"))
    else:
        tower = hf_audio_tower(tiny_qwen3_omni_checkpoint[1])
        tower.save_pretrained(tmp_path)
        card_extractor(TINY_QWEN3_OMNI).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family.name == "qwen3_omni"
    assert_holds_tower(io, tower.state_dict())
