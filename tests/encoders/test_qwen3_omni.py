"""Qwen3-Omni audio tower: its length rule and chunking helpers, and the packed forward against HF's own tower.

The reference is HF's ``get_audio_features`` on each clip ALONE (:meth:`reference_forward` called
once per clip): HF's batched call leaks conv padding into clips shorter than one chunk, which is
shown here too. Checked against it: attention-window variants, every kernel, conv slicing,
bf16/fp16 (and the torch CPU bf16 narrow-conv bug ours works around), gradients; plus the
chunking check and loading from thinker-only and encoder-only exports. The count a clip gets alone: a real
``Qwen3OmniMoeProcessor`` (tiny card's extractor, a tiny tokenizer; built for text and audio by the library's
``qwen3_omni_processor``) counts its audio placeholders, which find_length, preprocess, encode_batch and the oracle
must equal (with faults injected on both sides). ``returns="lm"`` is the tower (its rows are the LM's);
``returns="hidden_states"`` against the whole model's ``output_hidden_states``. What every family shares
(loading, oracle, lengths, padded batches, FLOPs vs torch) is in ``test_families.py``.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.audio import noise
from helpers.batches import noise_padded_batch, random_padded_batch
from helpers.checkpoints import (
    TINY_QWEN3_OMNI,
    assert_holds_tower,
    card_encoder_config,
    card_extractor,
    hf_audio_tower,
    perturb_,
    save_tiny_qwen3_omni,
)
from helpers.faults import layers_one_deeper, moved_hidden_states
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe, processing_qwen3_omni_moe
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeProcessorKwargs,
)

import contaudio.encoders.qwen3_omni as qwen3_omni
from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.packed import chunk_frames_per_clip
from contaudio.encoders.qwen3_omni import (
    CHUNK_FRAMES,
    packed_forward,
    qwen3_conv_widths,
    qwen3_omni_processor,
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


# ------------------------------------------------------------------ the count a clip alone gets from HF's processor
SAMPLE_RATE = 16000
HOP = 160
SHORTEST_CLIP = 201  # n_fft // 2 + 1: the processor's STFT reflects 200 samples at each end
# the issue's examples, hop multiples +-1 (one frame, chunk edges at 100 / 200 frames, 30 s), and random N
ISSUE_SAMPLES = (16001, 16159, 19999)
EDGE_HOPS = (2, 3, 8, 9, 99, 100, 101, 199, 200, 201, 3000)
ROW_ATOL = 1e-4  # float32 rows of the same weights on our mel vs the processor's (mel within ~1e-7)
MEL_ATOL = 1e-5  # our log-mel vs the processor's extractor (measured <= 1.2e-7)


def sample_counts() -> list[int]:
    """N for the count checks: the shortest clip, the issue's examples, ``k * hop + {-1, 0, 1}``, random N <= 30 s."""
    edges = [k * HOP + d for k in EDGE_HOPS for d in (-1, 0, 1)]
    random = np.random.default_rng(3).integers(SHORTEST_CLIP, 30 * SAMPLE_RATE, size=8).tolist()
    return sorted({SHORTEST_CLIP, *ISSUE_SAMPLES, *edges, *random})


@pytest.fixture(scope="module")
def processor() -> Qwen3OmniMoeProcessor:
    """HF's processor around the tiny card's extractor (HF's own class, as the card configures it), for text and audio
    (contaudio.encoders.processors.audio_only), with a tiny tokenizer holding the tokens it reads by name."""
    return qwen3_omni_processor(card_extractor(TINY_QWEN3_OMNI))


@pytest.fixture(scope="module")
def tiny_io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN3_OMNI, weights="random", dtype="float32")


def processor_clip(processor: Qwen3OmniMoeProcessor, wav: np.ndarray) -> dict[str, torch.Tensor]:
    """HF's processor on a prompt holding one audio and the clip alone (as at inference)."""
    return processor(text=processor.audio_token, audio=[wav], return_tensors="pt")


def placeholders(processor: Qwen3OmniMoeProcessor, out: dict[str, torch.Tensor]) -> int:
    """The audio placeholder tokens the processor put into the prompt."""
    return int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)).sum())


def count_mismatches(io: ContinuousAudioIO, processor: Qwen3OmniMoeProcessor, sizes: list[int]) -> list[tuple]:
    """Each N where find_length, preprocess's T, its mel frames and values disagree with HF's processor on the clip
    alone (placeholder count, feature_attention_mask frames, input_features): ``(N, what, ours, HF's)``."""
    rng = np.random.default_rng(0)
    found = []
    for n in sizes:
        wav = noise(rng, n)
        out = processor_clip(processor, wav)
        _, (rows, mel), _ = io.preprocess((wav, SAMPLE_RATE))
        hf_frames = int(out["feature_attention_mask"].sum())
        for what, ours, theirs in (("find_length", io.find_length(n), placeholders(processor, out)),
                                   ("preprocess T", rows, placeholders(processor, out)),
                                   ("mel frames", mel.shape[0], hf_frames)):  # fmt: skip
            if ours != theirs:
                found.append((n, what, ours, theirs))
        if mel.shape[0] == hf_frames:
            error = (torch.from_numpy(mel).T - out["input_features"][0, :, :hf_frames]).abs().max().item()
            if error > MEL_ATOL:
                found.append((n, "mel values", error, MEL_ATOL))
    return found


def test_clip_alone_count_equals_hfs_processor_placeholders(tiny_io, processor) -> None:
    """For one clip per prompt (inference), find_length == preprocess's T == the audio placeholders HF's processor
    writes, and preprocess's mel == the processor's input_features (N // 160 frames, reflected end): 13 / 13 / 16
    rows for the issue's 16001 / 16159 / 19999 samples, which the old ceil(N / 160) rule made 14 / 14 / 17."""
    assert [tiny_io.find_length(n) for n in ISSUE_SAMPLES] == [13, 13, 16]
    assert count_mismatches(tiny_io, processor, sample_counts()) == []


def test_the_count_check_fails_with_the_old_ceil_rule(tiny_io, processor, monkeypatch) -> None:
    """Fault on our side: the featurizer back on the max_length rule (ceil(N / 160) frames, zero-padded end)."""
    monkeypatch.setattr(tiny_io, "features", replace(tiny_io.features, unpadded=False))
    found = count_mismatches(tiny_io, processor, list(ISSUE_SAMPLES))
    assert {(n, what, ours, theirs) for n, what, ours, theirs in found if what == "find_length"} == {
        (16001, "find_length", 14, 13), (16159, "find_length", 14, 13), (19999, "find_length", 17, 16)}  # fmt: skip


def test_the_count_check_fails_when_hfs_processor_counts_otherwise(tiny_io, processor, monkeypatch) -> None:
    """Fault on HF's side: the processor's length helper one row over. The family's oracle counts with HF's
    processor (hf_placeholders), so its count moves too and no longer equals find_length."""
    wav = noise(np.random.default_rng(0), ISSUE_SAMPLES[0])
    extractor = tiny_io.features.hf_extractor()
    assert FAMILY.hf_placeholders(extractor, wav) == tiny_io.find_length(len(wav))  # the baseline agrees
    helper = processing_qwen3_omni_moe._get_feat_extract_output_lengths
    monkeypatch.setattr(processing_qwen3_omni_moe, "_get_feat_extract_output_lengths", lambda *a: helper(*a) + 1)
    found = count_mismatches(tiny_io, processor, [ISSUE_SAMPLES[0]])
    assert ("find_length" in {what for _, what, _, _ in found}) and ("preprocess T" in {w for _, w, _, _ in found})
    assert FAMILY.hf_placeholders(extractor, wav) == tiny_io.find_length(len(wav)) + 1


def test_clips_the_processor_cannot_take_are_refused_alike(tiny_io, processor) -> None:
    """<= 200 samples: HF's processor raises inside torch.stft (the reflection); find_length and preprocess raise a
    ValueError saying why. 201 samples: one frame, one row, everywhere."""
    short = np.zeros(SHORTEST_CLIP - 1, np.float32)
    with pytest.raises(RuntimeError):
        processor_clip(processor, short)
    for call in (lambda: tiny_io.find_length(len(short)), lambda: tiny_io.preprocess((short, SAMPLE_RATE))):
        with pytest.raises(ValueError, match=f"at least {SHORTEST_CLIP}"):
            call()
    assert count_mismatches(tiny_io, processor, [SHORTEST_CLIP]) == []
    assert tiny_io.find_length(SHORTEST_CLIP) == 1


def test_rows_equal_hfs_model_on_its_processors_output(tiny_qwen3_omni_checkpoint, processor, rng) -> None:
    """encode_batch in a padded batch == the whole HF model's thinker.get_audio_features on the processor's output for
    each clip alone, as many rows as the processor's placeholders; the family's oracle agrees (rows, values and its
    placeholder count). This is returns="lm", the default: the tower's rows are the LM's."""
    directory, model = tiny_qwen3_omni_checkpoint
    io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")
    assert io.returns == "lm" and io.family is FAMILY
    sizes = [*ISSUE_SAMPLES, 3 * HOP + 1, 250 * HOP - 1]
    wavs = [noise(rng, n) for n in sizes]
    mels = [torch.from_numpy(io.preprocess((wav, SAMPLE_RATE))[1][1]) for wav in wavs]
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.randn(len(mels), int(lengths.max()) + 7, io.n_mels)  # noise past each clip's end
    for i, mel in enumerate(mels):
        batch[i, : mel.shape[0]] = mel
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        ours = io.encode_batch(batch, lengths)
        for n, wav, rows in zip(sizes, wavs, ours, strict=True):
            out = processor_clip(processor, wav)
            hf = model.thinker.get_audio_features(out["input_features"],
                                                  feature_attention_mask=out["feature_attention_mask"])  # fmt: skip
            oracle = FAMILY.oracle(io.encoder, extractor, wav)
            assert rows.shape[0] == hf.last_hidden_state.shape[0] == placeholders(processor, out) == oracle.count, n
            assert oracle.placeholders == rows.shape[0], n
            torch.testing.assert_close(rows, hf.last_hidden_state, atol=ROW_ATOL, rtol=0, msg=str(n))
            torch.testing.assert_close(oracle.rows, hf.last_hidden_state, atol=ROW_ATOL, rtol=0, msg=str(n))


def test_oracle_calls_the_extractor_as_the_processor_does(tiny_io, processor, rng) -> None:
    """hf_inputs == the processor's input_features and frames for the clip alone; its kwargs are read from HF."""
    wav = noise(rng, ISSUE_SAMPLES[2])
    features, frames = FAMILY.hf_inputs(tiny_io.features.hf_extractor(), wav)
    out = processor_clip(processor, wav)
    assert frames == int(out["feature_attention_mask"].sum()) == ISSUE_SAMPLES[2] // HOP
    torch.testing.assert_close(features, out["input_features"], atol=0, rtol=0)


def test_oracle_follows_hfs_processor_defaults(tiny_io, rng, monkeypatch) -> None:
    """Fault on HF's side: a processor whose default padding were max_length gives ceil(N / 160) frames; the oracle
    reads the defaults from transformers, so its count moves with them and no longer equals find_length."""
    if getattr(Qwen3OmniMoeProcessor, "audio_kwargs", None) is not None:  # transformers >= 5.2x
        changed = {**Qwen3OmniMoeProcessor.audio_kwargs, "padding": "max_length"}
        monkeypatch.setattr(Qwen3OmniMoeProcessor, "audio_kwargs", changed)
    else:  # 5.14
        changed = {**Qwen3OmniMoeProcessorKwargs._defaults["audio_kwargs"], "padding": "max_length"}
        monkeypatch.setitem(Qwen3OmniMoeProcessorKwargs._defaults, "audio_kwargs", changed)
    wav = noise(rng, ISSUE_SAMPLES[0])
    _, frames = FAMILY.hf_inputs(tiny_io.features.hf_extractor(), wav)
    assert frames == ISSUE_SAMPLES[0] // HOP + 1
    assert qwen3_omni_rows(frames) != tiny_io.find_length(ISSUE_SAMPLES[0])


# ------------------------------------------------------------------------------- returns="lm" / "hidden_states"
HIDDEN_SAMPLES = (3 * HOP + 1, 16001, 250 * HOP - 1, 450 * HOP + 7)  # < 1 s, a chunk edge, 1 / 2+ attention windows
HIDDEN_ATOL = 1e-4  # float32 hidden states of the same weights on our mel vs the processor's
HIDDEN_PADDING = 9  # noise frames past the longest clip of a batch


def test_lm_is_the_tower() -> None:
    """Qwen3-Omni's tower rows are what the thinker splices into its LM: returns="lm" is the tower, same module."""
    lm, tower = (ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN3_OMNI, weights="random", dtype="float32",
                                   returns=returns) for returns in ("lm", "tower"))  # fmt: skip
    assert lm.family is tower.family is FAMILY and lm.feature_dim() == tower.feature_dim() == 48
    assert lm.state_dict().keys() == tower.state_dict().keys()
    mel, lengths = random_padded_batch(LENGTHS)
    with torch.inference_mode():
        for ours, theirs in zip(lm.encode_batch(mel, lengths), tower.encode_batch(mel, lengths), strict=True):
            torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def hidden_io(directory, layers: list[int]) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             returns="hidden_states", layers=layers)  # fmt: skip


def hf_hidden_states(model, processor: Qwen3OmniMoeProcessor, wav: np.ndarray, layers: tuple[int, ...]) -> torch.Tensor:
    """The whole HF model: ``thinker.get_audio_features(..., output_hidden_states=True)`` on the processor's output for
    the clip alone: ``[len(layers), rows, d_model]``."""
    out = processor_clip(processor, wav)
    mask = out["feature_attention_mask"]
    states = model.thinker.get_audio_features(out["input_features"], feature_attention_mask=mask,
                                              output_hidden_states=True).hidden_states  # fmt: skip
    return torch.stack([states[i] for i in layers])


def hidden_state_mismatches(io: ContinuousAudioIO, model, processor, wavs: list[np.ndarray], rng) -> list[str]:
    """contaudio on a noise-padded batch of ``wavs`` (find_length, preprocess's T, encode_batch) against the whole HF
    model for each clip alone and the family's oracle: every way they differ ([] when counts agree and values are
    within HIDDEN_ATOL). encode_batch's own row check raising counts as a difference."""
    processed = [io.preprocess((wav, SAMPLE_RATE))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], HIDDEN_PADDING, rng)
    extractor, found = io.features.hf_extractor(), []
    with torch.inference_mode():
        try:
            outs = io.encode_batch(mel, lengths)
        except RuntimeError as err:
            return [f"encode_batch raised {err}"]
        for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
            theirs, oracle = (
                hf_hidden_states(model, processor, wav, io.layers),
                io.family.oracle(io.encoder, extractor, wav),
            )
            if oracle.rows is None or oracle.placeholders is not None:
                found.append(f"{len(wav)}: oracle {oracle.describe()} (hidden states are not the LM's rows)")
                continue
            counts = {"find_length": io.find_length(len(wav)), "preprocess": rows, "encode_batch": ours.shape[1],
                      "HF's model": theirs.shape[1], "the oracle": oracle.count}  # fmt: skip
            if len(set(counts.values())) > 1 or ours.shape != theirs.shape:
                found.append(f"{len(wav)}: rows differ: {counts}, shapes {tuple(ours.shape)} {tuple(theirs.shape)}")
                continue
            for name, value in (("encode_batch", ours), ("the oracle", oracle.rows)):
                if (diff := float((value - theirs).abs().max())) > HIDDEN_ATOL:
                    found.append(f"{len(wav)}: {name} differs from HF's model by {diff:.3g}")
    return found


@pytest.mark.parametrize("layers", [[0, -1], [1], [2, 0]], ids=str)
def test_hidden_states_equal_the_models_output_hidden_states(tiny_qwen3_omni_checkpoint, processor, rng, layers):
    """[len(layers), T, d_model] per clip: find_length == preprocess's T == encode_batch == the whole model's
    hidden_states (13 rows per chunk: the layer stack's; 0 the first layer's input, -1 the last layer's output, before
    ln_post); only the layers up to the deepest are kept, the head after the stack is gone."""
    directory, model = tiny_qwen3_omni_checkpoint
    io = hidden_io(directory, layers)
    assert io.feature_dim() == model.config.thinker_config.audio_config.d_model == 32
    assert len(io.encoder.layers) == max(*io.layers, 1)
    assert all(isinstance(io.encoder.get_submodule(name), torch.nn.Identity) for name in FAMILY.head_modules)
    assert hidden_state_mismatches(io, model, processor, [noise(rng, n) for n in HIDDEN_SAMPLES], rng) == []


def dropped_row(forward):
    """HF's fault: its tower's hidden states lose their last row."""

    def dropped(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if out.hidden_states is not None:
            out.hidden_states = tuple(state[:-1] for state in out.hidden_states)
        return out

    return dropped


def test_hidden_states_check_fails_when_either_side_breaks(tiny_qwen3_omni_checkpoint, processor, rng, monkeypatch):
    """Ours: the layers one deeper, sub-second clips padded to a whole chunk (Qwen3-ASR's rule), the row rule one
    over; HF's: the tower's hidden states moved, or a row dropped."""
    directory, model = tiny_qwen3_omni_checkpoint
    io = hidden_io(directory, [0, 2])
    wavs = [noise(rng, n) for n in (3 * HOP + 1, 16001)]
    assert hidden_state_mismatches(io, model, processor, wavs, rng) == []  # the baseline passes
    forward = Qwen3OmniMoeAudioEncoder.forward
    faults = {
        "ours: layers one deeper": (qwen3_omni, "windowed_hidden_states", layers_one_deeper),
        "ours: short clips padded": (qwen3_omni, "qwen3_conv_widths", lambda lengths, clips, width: torch.full_like(
            clips, width)),
        "ours: the row rule": (type(FAMILY), "hidden_rows", lambda self, m: qwen3_omni_rows(m) + 1),
        "HF: hidden states moved": (Qwen3OmniMoeAudioEncoder, "forward", moved_hidden_states(forward)),
        "HF: a row dropped": (Qwen3OmniMoeAudioEncoder, "forward", dropped_row(forward)),
    }  # fmt: skip
    for name, (owner, attribute, fault) in faults.items():
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, fault)
            assert hidden_state_mismatches(io, model, processor, wavs, rng), f"{name}: not caught"
