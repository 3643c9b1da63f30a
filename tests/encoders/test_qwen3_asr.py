"""Qwen3-ASR: the length rule equals HF's own helper for every M; a batch equals each clip alone (HF's own
batched call does not: the frames after a short clip leak into its last chunk).

Each ``returns=`` mode against HF's whole model (a tiny ``Qwen3ASRForConditionalGeneration`` saved by transformers,
weights perturbed) on noise-padded batches of clips from 1 sample to > 2 attention windows: ``"lm"`` (the default) is
``get_audio_features(...).pooler_output`` counted as ``Qwen3ASRProcessor``'s placeholders, from transformers'
layout and from Qwen's own (the projector as ``thinker.audio_tower.proj1/proj2``); ``"hidden_states"`` is the
model's ``output_hidden_states``. Each check is seen failing with a fault on our side and on HF's.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from encoders.test_layouts import QWEN3_ASR_OFFICIAL_KEYS, qwen3_asr_official_config
from helpers.audio import noise
from helpers.batches import noise_padded_batch
from helpers.checkpoints import (
    TINY_QWEN3_ASR,
    assert_holds_tower,
    card_extractor,
    hf_audio_tower,
    read_weights,
    relayout,
    rename_prefixes,
)
from helpers.faults import layers_one_deeper, moved_hidden_states
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen3ASRProcessor
from transformers.models.qwen3_asr.modeling_qwen3_asr import (
    Qwen3ASREncoder,
    Qwen3ASRModel,
    _get_feat_extract_output_lengths,
)

import contaudio.encoders.qwen3_asr as qwen3_asr
import contaudio.encoders.qwen3_omni as qwen3_omni
from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.qwen3_asr import (
    PROCESSOR_TOKENS,
    Qwen3ASRLM,
    lm_module_config,
    qwen3_asr_forward,
    qwen3_asr_processor,
)
from contaudio.encoders.qwen3_omni import qwen3_conv_widths, qwen3_omni_rows

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = get_family("qwen3_asr")
SR = 16000
HOP = 160
# 1 sample and 0.03 s (the extractor's 0.5 s minimum: 50 frames, one chunk under 1 s), 1 s chunk edges, 2 s
# attention windows (n_window_infer 200 on the tiny card), and 4.5 s (three windows)
CLIP_SAMPLES = (1, 481, 16000, 16001, 19999, 250 * HOP - 1, 450 * HOP + 7)
ATOL = 1e-4  # float32, same weights; our log-mel vs the extractor's differ by ~1e-7
PADDING_EXTRA = 9  # noise frames past the longest clip of a batch
LAYERS = ([0, -1], [1], [2, 0])


def test_rows_equal_hfs_length_helper_for_every_m() -> None:
    frames = torch.arange(1, 3001)
    assert torch.equal(FAMILY.rows(frames), _get_feat_extract_output_lengths(frames))
    assert [FAMILY.rows(m) for m in (1, 50, 100, 101)] == [1, 7, 13, 14]


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN3_ASR, weights="random", dtype="float32", returns="tower")


def test_hfs_batched_call_differs_from_the_clip_alone_ours_does_not(io) -> None:
    """Why the oracle runs one clip per call: HF's features of a shorter clip are followed by the next frames."""
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 250, io.n_mels, generator=generator)
    lengths = torch.tensor([250, 130])
    with torch.inference_mode():
        alone = [
            io.family.reference_forward(io.encoder, mel[i : i + 1, :n], lengths[i : i + 1])
            for i, n in enumerate([250, 130])
        ]
        ours = io.encode_batch(mel, lengths)
        features = mel.transpose(1, 2)  # HF's batched layout: the short clip's chunk sees frames 130..199
        features = torch.nn.functional.pad(features, (0, 50))
        hf_batched = io.family.hf_encode(io.encoder, features, lengths)
    for clip, ref in zip(ours, alone, strict=True):
        torch.testing.assert_close(clip, ref, atol=1e-5, rtol=0)
    short = hf_batched[alone[0].shape[0] :]
    assert float((short - alone[1]).abs().max()) > 1e-3


def test_a_clip_under_half_a_second_gets_the_extractors_50_frames(io) -> None:
    _, (rows, mel), _ = io.preprocess((torch.zeros(1, 1600), 16000))
    assert mel.shape[0] == 50 and rows == io.find_length(1600) == 7


# ------------------------------------------------------------------------------- each mode against the whole model
Reference = Callable[[np.ndarray], tuple[torch.Tensor, int | None]]  # HF for one clip: (rows [.., T, D], placeholders)


@pytest.fixture(scope="module")
def checkpoint(family_checkpoints):
    """(directory, model): a tiny random full Qwen3-ASR saved by transformers (its 5.x keys, ``model.*``)."""
    return family_checkpoints["qwen3_asr"]


@pytest.fixture(scope="module")
def official(checkpoint, tmp_path_factory):
    """The same weights laid out as Qwen's own repos are (``thinker.*``; the projector is the tower's proj1/proj2)."""
    directory = tmp_path_factory.mktemp("qwen3_asr_official")
    config = json.loads((checkpoint[0] / "config.json").read_text())
    relayout(checkpoint[0], directory, rename_prefixes(QWEN3_ASR_OFFICIAL_KEYS), qwen3_asr_official_config(config))
    return directory


@pytest.fixture(scope="module")
def processor() -> Qwen3ASRProcessor:
    return qwen3_asr_processor(card_extractor(TINY_QWEN3_ASR))


def mode_io(directory, returns: str | None = None, layers: list[int] | None = None) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             returns=returns, layers=layers)  # fmt: skip


def processor_clip(processor: Qwen3ASRProcessor, wav: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
    """HF's processor on a prompt holding the clip alone: its outputs and the audio placeholders it wrote."""
    out = processor(text=processor.audio_token, audio=wav, return_tensors="pt")
    return out, int((out["input_ids"] == processor.audio_token_id).sum())


def lm_reference(model, processor: Qwen3ASRProcessor) -> Reference:
    """The whole model's ``get_audio_features(...).pooler_output`` on the processor's output, and its placeholders."""

    def reference(wav: np.ndarray) -> tuple[torch.Tensor, int]:
        out, placeholders = processor_clip(processor, wav)
        return model.get_audio_features(out["input_features"], out["input_features_mask"]).pooler_output, placeholders

    return reference


def hidden_reference(model, processor: Qwen3ASRProcessor, layers: tuple[int, ...]) -> Reference:
    """The whole model's ``get_audio_features(..., output_hidden_states=True).hidden_states[layers]``."""

    def reference(wav: np.ndarray) -> tuple[torch.Tensor, None]:
        out, _ = processor_clip(processor, wav)
        states = model.get_audio_features(out["input_features"], out["input_features_mask"],
                                          output_hidden_states=True).hidden_states  # fmt: skip
        return torch.stack([states[i] for i in layers]), None

    return reference


def mismatches(io: ContinuousAudioIO, reference: Reference, wavs: list[np.ndarray], rng) -> list[str]:
    """contaudio on a noise-padded batch of ``wavs`` (find_length, preprocess's T, encode_batch) against HF's whole
    model for each clip alone and the family's oracle (rows, values; for ``"lm"`` the placeholder counts of HF's
    processor and of the oracle): every way they differ, [] when none. encode_batch's own row check raising
    counts as a difference."""
    processed = [io.preprocess((wav, SR))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], PADDING_EXTRA, rng)
    extractor, found = io.features.hf_extractor(), []
    with torch.inference_mode():
        try:
            outs = io.encode_batch(mel, lengths)
        except RuntimeError as err:
            return [f"encode_batch raised {err}"]
        for wav, (rows, _), ours in zip(wavs, processed, outs, strict=True):
            theirs, placeholders = reference(wav)
            oracle = io.family.oracle(io.encoder, extractor, wav)
            if oracle.rows is None:
                found.append(f"{len(wav)} samples: HF raised {oracle.error}")
                continue
            counts = {"find_length": io.find_length(len(wav)), "preprocess": rows, "encode_batch": ours.shape[-2],
                      "the oracle": oracle.count, "HF's model": theirs.shape[-2]}  # fmt: skip
            if io.returns == "lm":
                counts |= {"the processor's placeholders": placeholders, "the oracle's": oracle.placeholders}
            elif oracle.placeholders is not None:
                found.append(f"{len(wav)} samples: {io.returns} rows are not the LM's, yet the oracle counted some")
            if len(set(counts.values())) > 1 or ours.shape != theirs.shape:
                found.append(
                    f"{len(wav)} samples: rows differ: {counts}, shapes {tuple(ours.shape)} {tuple(theirs.shape)}"
                )
                continue
            for name, value in (("encode_batch", ours), ("the oracle", oracle.rows)):
                if (diff := float((value - theirs).abs().max())) > ATOL:
                    found.append(f"{len(wav)} samples: {name} differs from HF's model by {diff:.3g}")
    return found


def clips(rng: np.random.Generator, sizes=CLIP_SAMPLES) -> list[np.ndarray]:
    return [noise(rng, n) for n in sizes]


# ------------------------------------------------------------------------------------------------ returns="lm"
@pytest.mark.parametrize("layout", ["transformers", "qwen"])
def test_lm_is_the_models_pooler_output_counted_as_its_placeholders(checkpoint, official, processor, rng, layout):
    """The default mode, from transformers' layout and Qwen's own: the tower and the projector (only those) load,
    rows are 13 per second and the LM width wide, equal to the whole model's pooler_output, as many as the
    processor's placeholders (and the oracle's count of them)."""
    directory, model = checkpoint
    io = mode_io(directory if layout == "transformers" else official)
    assert io.returns == "lm" and isinstance(io.family, Qwen3ASRLM)
    assert io.feature_dim() == model.config.audio_config.output_dim == 48
    reference = {key: value for key, value in model.model.state_dict().items()
                 if key.startswith(("audio_tower.", "multi_modal_projector."))}  # fmt: skip
    assert_holds_tower(io, reference, layout)
    assert mismatches(io, lm_reference(model, processor), clips(rng), rng) == []


def test_lm_loads_the_layout_of_repositories_converted_before_transformers_5(checkpoint, tmp_path, rng) -> None:
    """``audio_tower.*`` / ``multi_modal_projector.*`` without ``model.``."""
    directory, model = checkpoint
    legacy = {"model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector."}
    relayout(directory, tmp_path, rename_prefixes(legacy), json.loads((directory / "config.json").read_text()))
    assert any(key.startswith("multi_modal_projector.") for key in read_weights(tmp_path))
    reference = {key: value for key, value in model.model.state_dict().items()
                 if key.startswith(("audio_tower.", "multi_modal_projector."))}  # fmt: skip
    assert_holds_tower(mode_io(tmp_path), reference)


def test_lm_check_fails_when_either_side_breaks(checkpoint, processor, rng, monkeypatch) -> None:
    """Ours: the row rule one over, the projector's activation dropped, a sub-second clip convolved unpadded
    (Qwen3-Omni's rule); HF's: get_audio_features dropping a row, the processor counting one more."""
    directory, model = checkpoint
    io, wavs = mode_io(directory), clips(rng, (481, 16001))
    reference = lm_reference(model, processor)
    assert mismatches(io, reference, wavs, rng) == []  # the baseline passes
    get_audio_features, count = Qwen3ASRModel.get_audio_features, Qwen3ASRProcessor._get_audio_token_length

    def no_activation(encoder, mel, lengths):
        projector = encoder.multi_modal_projector
        return projector.linear_2(projector.linear_1(qwen3_asr_forward(encoder.audio_tower, mel, lengths)))

    def drop_last_row(self, *args, **kwargs):
        out = get_audio_features(self, *args, **kwargs)
        out.pooler_output = out.pooler_output[:-1]
        return out

    faults = {
        "ours: the row rule": (Qwen3ASRLM, "rows", staticmethod(lambda m: qwen3_omni_rows(m) + 1)),
        "ours: no activation": (qwen3_asr, "qwen3_asr_lm_forward", no_activation),
        "ours: short clips unpadded": (qwen3_asr, "full_chunk_widths", qwen3_conv_widths),
        "HF: a row dropped": (Qwen3ASRModel, "get_audio_features", drop_last_row),
        "HF: one more placeholder": (Qwen3ASRProcessor, "_get_audio_token_length",
                                     lambda self, *a, **k: count(self, *a, **k) + 1),
    }  # fmt: skip
    for name, (owner, attribute, fault) in faults.items():
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, fault)
            assert mismatches(io, reference, wavs, rng), f"{name}: not caught"


def test_lm_needs_qwens_projector_layout_for_qwens_repos(official, monkeypatch) -> None:
    """Fault injection: without the layout mapping Qwen's proj1/proj2 to the projector, Qwen's repo is refused."""
    monkeypatch.setattr(Qwen3ASRLM, "weight_prefixes", Qwen3ASRLM.weight_prefixes[:2])
    with pytest.raises(ValueError, match="no audio-encoder tensors found"):
        mode_io(official)


def test_the_processor_is_hfs_with_its_audio_tokens() -> None:
    processor = qwen3_asr_processor(card_extractor(TINY_QWEN3_ASR))
    assert type(processor) is Qwen3ASRProcessor
    assert (processor.audio_token, processor.audio_bos_token, processor.audio_eos_token) == tuple(
        PROCESSOR_TOKENS.values()
    )


def test_lm_without_the_models_config_is_refused(checkpoint, tmp_path) -> None:
    """A bare tower export has no projector and no LM width: returns='lm' says so; returns='tower' loads it."""
    tower = hf_audio_tower(checkpoint[1])
    tower.save_pretrained(tmp_path)
    card_extractor(TINY_QWEN3_ASR).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"returns='lm' needs the whole Qwen3-ASR model's config.*returns='tower'"):
        mode_io(tmp_path)
    assert_holds_tower(mode_io(tmp_path, "tower"), tower.state_dict())
    with pytest.raises(ValueError, match="no model config"):
        lm_module_config(FAMILY.encoder_config({"model_type": "qwen3_asr_encoder"}), None)
    with pytest.raises(ValueError, match=r"no text_config\.hidden_size"):
        lm_module_config({}, {"model_type": "qwen3_asr"})


@pytest.mark.parametrize("card", [TINY_QWEN3_ASR, "Qwen/Qwen3-ASR-0.6B", "Qwen/Qwen3-ASR-1.7B"])
def test_cards_give_the_lm_width(card: str) -> None:
    """Each card's projector ends at its LM's width (1024 for 0.6B, 2048 for 1.7B), the feature_dim of "lm"."""
    io = ContinuousAudioIO(encoder_hf_model_tag=card, weights="random", skip_init_encoder=True)
    width = io.source.model_config["text_config"]["hidden_size"]
    assert io.returns == "lm" and io.feature_dim() == io.source.encoder_config["output_dim"] == width
    tower = ContinuousAudioIO(encoder_hf_model_tag=card, weights="random", skip_init_encoder=True, returns="tower")
    assert tower.feature_dim() == io.source.encoder_config["d_model"]


def test_lm_flop_rule_equals_torchs_counter_on_hfs_path() -> None:
    io = ContinuousAudioIO(
        encoder_hf_model_tag=TINY_QWEN3_ASR, weights="random", dtype="float32", attn_implementation="eager"
    )  # fmt: skip (eager: countable matmuls)
    lengths = (37, 200, 250, 1013)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for m in lengths:  # one clip per call, as the oracle runs it
            io.family.reference_forward(io.encoder, torch.zeros(1, m, io.n_mels), torch.tensor([m]))
    module_config = io.family.module_config(io.source.encoder_config, io.source.model_config)
    assert io.family.flops(io.encoder.config, lengths) == counter.get_total_flops()
    assert io.family.flops(module_config, lengths) == counter.get_total_flops()


# ---------------------------------------------------------------------------------------- returns="hidden_states"
@pytest.mark.parametrize("layers", LAYERS, ids=str)
def test_hidden_states_equal_the_models_output_hidden_states(checkpoint, processor, rng, layers) -> None:
    """[len(layers), T, d_model] per clip, the layer stack's rows (0: the first layer's input, -1: the last layer's
    output, before ln_post); only the layers up to the deepest are kept, ln_post is gone."""
    directory, model = checkpoint
    io = mode_io(directory, "hidden_states", layers)
    assert io.feature_dim() == model.config.audio_config.d_model == 32
    assert len(io.encoder.layers) == max(*io.layers, 1) and isinstance(io.encoder.ln_post, torch.nn.Identity)
    assert mismatches(io, hidden_reference(model, processor, io.layers), clips(rng), rng) == []


def test_hidden_states_check_fails_when_either_side_breaks(checkpoint, processor, rng, monkeypatch) -> None:
    """Ours: the layers one deeper, a sub-second clip convolved unpadded; HF's: its hidden states moved."""
    directory, model = checkpoint
    io, wavs = mode_io(directory, "hidden_states", [0, 2]), clips(rng, (481, 16001))
    reference = hidden_reference(model, processor, io.layers)
    assert mismatches(io, reference, wavs, rng) == []
    forward = Qwen3ASREncoder.forward

    moved = moved_hidden_states(forward)

    faults = {
        "ours: layers one deeper": (qwen3_omni, "windowed_hidden_states", layers_one_deeper),
        "ours: short clips unpadded": (qwen3_asr, "full_chunk_widths", qwen3_conv_widths),
        "HF: hidden states moved": (Qwen3ASREncoder, "forward", moved),
    }
    for name, (owner, attribute, fault) in faults.items():
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, fault)
            assert mismatches(io, reference, wavs, rng), f"{name}: not caught"
