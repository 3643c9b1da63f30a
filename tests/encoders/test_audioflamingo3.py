"""Audio Flamingo 3: rows equal the processor's own token count; the processor's 600 s limit is honoured by a
clear error, never a cut; each 30 s piece is extracted on its own, as its processor does; clips longer than
30 s equal AudioFlamingo3Processor + HF's model path, and that check fails when either side breaks.

Modes: ``"lm"`` (the default) is HF's ``pooler_output`` (tower + projector) counted as the processor's placeholders;
``"hidden_states"`` is HF's ``output_hidden_states`` (its last entry the pooled tower output, asked alone); each is
checked against HF's whole model saved by transformers, with faults injected on both sides."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import window_modes as modes
from helpers.audio import noise
from helpers.checkpoints import TINY_AUDIOFLAMINGO3, card_extractor, perturb_, relayout, rename_prefixes
from helpers.faults import moved_hidden_states
from transformers.models.audioflamingo3.configuration_audioflamingo3 import AudioFlamingo3EncoderConfig
from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder, AudioFlamingo3Model
from transformers.models.audioflamingo3.processing_audioflamingo3 import AudioFlamingo3Processor

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders import qwen2_audio as qwen2_audio_module
from contaudio.encoders.audioflamingo3 import AudioFlamingo3HiddenStates, AudioFlamingo3LM
from contaudio.encoders.qwen2_audio import masked_window_forward, qwen2_audio_rows
from contaudio.encoders.registry import HiddenStatesView
from contaudio.encoders.windows import ClipTooLongError, placeholder_count

FAMILY = get_family("audioflamingo3")
SR = 16000
WINDOW_SAMPLES = 30 * SR  # the processor's window: feature_extractor.chunk_length seconds
MAX_SAMPLES = 600 * SR  # AudioFlamingo3Processor(max_audio_len=600)
PERTURB_SEED = 3
HUB_KEYS = {"model.audio_tower.": "audio_tower.", "model.multi_modal_projector.": "multi_modal_projector.",
            "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_equal_the_processors_token_count() -> None:
    frames = torch.tensor([1, 2, 3, 4, 100, 2999, 3000, 3001, 3003, 6000, 17999, 60000])
    tokens = AudioFlamingo3Processor._get_audio_token_length(None, frames)
    assert torch.equal(FAMILY.rows(frames), tokens)


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", dtype="float32",
                             long_clip="windows", returns="tower", skip_init_encoder=True)  # fmt: skip


@pytest.fixture(scope="module")
def perturbed_io() -> ContinuousAudioIO:
    """The tiny card with random weights, perturbed (non-zero biases) so that padding leaks show."""
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", dtype="float32",
                           long_clip="windows", returns="tower")  # fmt: skip
    perturb_(io.encoder, seed=PERTURB_SEED)
    return io


def test_600_s_is_the_limit_and_longer_clips_raise(io) -> None:
    assert io.find_length(600 * 16000) == 15000
    with pytest.raises(ClipTooLongError, match="at most 60000 mel frames"):
        io.find_length(600 * 16000 + 1)


def test_each_30_s_piece_is_extracted_on_its_own(io, rng) -> None:
    wav = noise(rng, 35 * 16000)
    wav[: 30 * 16000] *= 100.0  # a loud first window: a whole-clip clamp would floor the quiet second one
    _, (_, mel), _ = io.preprocess((wav, 16000))
    features, frames = FAMILY.hf_inputs(io.features.hf_extractor(), wav)
    assert mel.shape[0] == frames == 3500
    assert np.abs(mel - features[0, :, :frames].T.numpy()).max() <= 1e-4


LONG_CLIPS = {"exactly 30 s": (WINDOW_SAMPLES, False), "30 s + 1 sample": (WINDOW_SAMPLES + 1, False),
              "35 s, loud first window": (35 * SR, True), "61 s: two windows and a partial one": (61 * SR, False),
              "600 s: the processor's limit": (MAX_SAMPLES, False)}  # fmt: skip


@pytest.mark.parametrize("name", LONG_CLIPS)
def test_long_clips_equal_the_processor_and_hfs_model(perturbed_io, rng, name: str) -> None:
    num_samples, loud = LONG_CLIPS[name]
    assert modes.oracle_disagreements(perturbed_io, modes.clip(rng, num_samples, loud)) == []


def test_the_check_fails_when_contaudio_does_not_cut_the_waveform(perturbed_io, rng, monkeypatch) -> None:
    """One log-mel over the whole clip (no 30 s cut): the quiet window after a loud one gets the loud one's clamp."""
    monkeypatch.setattr(type(FAMILY), "cuts_waveform", False)
    mutated = ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", dtype="float32",
                                long_clip="windows", returns="tower")  # fmt: skip
    mutated.encoder.load_state_dict(perturbed_io.encoder.state_dict())
    found = modes.oracle_disagreements(mutated, modes.clip(rng, 35 * SR, loud_first_window=True))
    assert len(found) == 1 and found[0].startswith("values differ"), found


def test_the_check_fails_when_hfs_processor_cuts_other_windows(perturbed_io, rng) -> None:
    """The oracle is the processor's own cut: a processor cutting 20 s windows (read from its extractor's
    chunk_length) gives other features for the same clip, and the check says so."""
    extractor = perturbed_io.features.hf_extractor()
    extractor.chunk_length = 20
    found = modes.oracle_disagreements(perturbed_io, modes.clip(rng, 35 * SR), extractor)
    assert len(found) == 1 and found[0].startswith("values differ"), found


PLACEHOLDER_SAMPLES = (1, 159, 160, 161, 400, 16000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES, WINDOW_SAMPLES + 1,
                       WINDOW_SAMPLES + 160, 2 * WINDOW_SAMPLES + 1, MAX_SAMPLES)  # fmt: skip


def test_the_prompts_placeholders_equal_find_length(io) -> None:
    """The tower's pooled rows are what the LM receives: the processor writes find_length placeholders."""
    processor = FAMILY.hf_processor(io.features.hf_extractor())
    counts = {n: placeholder_count(processor, np.zeros(n, np.float32)) for n in PLACEHOLDER_SAMPLES}
    assert counts == {n: io.find_length(n) for n in PLACEHOLDER_SAMPLES}


def test_placeholders_are_the_processors_own(io, monkeypatch) -> None:
    """A processor that writes one more placeholder per clip is seen: the count is HF's, not contaudio's rule."""
    processor = FAMILY.hf_processor(io.features.hf_extractor())
    count = AudioFlamingo3Processor._get_audio_token_length
    monkeypatch.setattr(AudioFlamingo3Processor, "_get_audio_token_length", lambda self, n: count(self, n) + 1)
    assert placeholder_count(processor, np.zeros(16000, np.float32)) == io.find_length(16000) + 1


# ------------------------------------------------------------------------------------------------ returns= modes
# Each mode on a whole tiny Audio Flamingo 3 saved by transformers (perturbed weights), against HF's whole model and
# the family's oracle, each clip alone through AudioFlamingo3Processor; clips < 30 s and > 30 s in one noise-padded
# batch (tests/helpers/window_modes.py).
DEPTH = 2  # the tiny card's layers: hidden states 0..2, the last one the tower's pooled output


@pytest.fixture(scope="module")
def checkpoint(family_checkpoints):
    return family_checkpoints["audioflamingo3"]


def hidden_reference(model, layers: tuple[int, ...]) -> modes.Reference:
    """HF's whole (untrimmed) tower with ``output_hidden_states=True`` on the processor's windows and masks, rows by
    its own ``_get_feat_extract_output_lengths``: the pooled count for its last entry, the conv count below."""
    tower = model.model.audio_tower

    def reference(audio):
        out = tower(audio.input_features, input_features_mask=audio.input_features_mask, output_hidden_states=True)
        conv, pooled = tower._get_feat_extract_output_lengths(audio.input_features_mask.sum(-1))
        states = torch.stack([out.hidden_states[i] for i in layers])
        return modes.window_rows(states, pooled if DEPTH in layers else conv)

    return reference


def test_lm_is_the_projected_pooler_output_counted_as_the_processors_placeholders(checkpoint, rng) -> None:
    """find_length == preprocess's T == encode_batch rows == HF's pooler_output rows == the processor's
    placeholders, values within float32 tolerance of HF's whole model; the module holds the tower and projector."""
    directory, model = checkpoint
    io = modes.mode_io(directory, "lm")
    assert io.returns == "lm" and modes.mode_io(directory, None).returns == "lm"  # the default
    assert io.feature_dim() == model.config.text_config.hidden_size
    assert {name.split(".")[0] for name in io.encoder.state_dict()} == {"audio_tower", "multi_modal_projector"}
    projector = model.model.multi_modal_projector.state_dict()
    assert all(torch.equal(io.encoder.multi_modal_projector.state_dict()[k], v) for k, v in projector.items())
    assert modes.disagreements(io, modes.clips(rng), rng, modes.lm_reference(model)) == []


def test_lm_find_length_is_the_processors_placeholder_count() -> None:
    """``find_length`` in ``"lm"`` mode (the default) = the placeholders AudioFlamingo3Processor writes."""
    lm = ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", long_clip="windows",
                           skip_init_encoder=True)  # fmt: skip
    extractor = lm.features.hf_extractor()
    processor = FAMILY.hf_processor(extractor)
    counts = {n: placeholder_count(processor, np.zeros(n, np.float32)) for n in PLACEHOLDER_SAMPLES}
    assert lm.returns == "lm" and counts == {n: lm.find_length(n) for n in PLACEHOLDER_SAMPLES}
    assert lm.family.hf_placeholders(extractor, np.zeros(WINDOW_SAMPLES + 16000, np.float32)) == 775


def test_lm_loads_the_hubs_key_names(checkpoint, tmp_path) -> None:
    """nvidia/audio-flamingo-3-hf keeps ``audio_tower.*`` / ``multi_modal_projector.*`` (transformers 4 names): the
    lm module reads exactly those (and nothing of the LM)."""
    directory, model = checkpoint
    config = json.loads((directory / "config.json").read_text())
    relayout(directory, tmp_path, rename_prefixes(HUB_KEYS), config)
    io = modes.mode_io(tmp_path, "lm")
    ours = io.encoder.state_dict()
    theirs = {f"{part}.{key}": value for part in ("audio_tower", "multi_modal_projector")
              for key, value in model.model.get_submodule(part).state_dict().items()}  # fmt: skip
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_lm_check_fails_when_either_side_breaks(checkpoint, rng, monkeypatch) -> None:
    """Our side: the projector without its GELU (values), a rule one row long (counts: encode_batch's own guard
    refuses it first). HF's side: its get_audio_features moving or dropping a row, its processor writing one more
    placeholder."""
    directory, model = checkpoint
    io, wavs = modes.mode_io(directory, "lm"), modes.clips(rng)[:2]
    reference = modes.lm_reference(model)
    with monkeypatch.context() as patch:
        patch.setattr(AudioFlamingo3LM, "forward", forward_without_gelu)
        assert fails_with(modes.disagreements(io, wavs, rng, reference), "encode_batch differs", len(wavs))
    with monkeypatch.context() as patch:
        patch.setattr(AudioFlamingo3LM, "rows", staticmethod(lambda m: qwen2_audio_rows(m) + 1))
        with pytest.raises(RuntimeError, match="encoder returned 28 rows, length rule says 30"):  # io's own guard
            modes.disagreements(io, wavs, rng, reference)
    get_audio_features = AudioFlamingo3Model.get_audio_features
    for fault in (lambda rows: rows + 1e-3, lambda rows: rows[:-1]):
        with monkeypatch.context() as patch:
            patch.setattr(AudioFlamingo3Model, "get_audio_features", hf_fault(get_audio_features, fault))
            assert len(modes.disagreements(io, wavs, rng, reference)) == len(wavs)
    count = AudioFlamingo3Processor._get_audio_token_length
    with monkeypatch.context() as patch:
        patch.setattr(AudioFlamingo3Processor, "_get_audio_token_length", lambda self, n: count(self, n) + 1)
        assert fails_with(modes.disagreements(io, wavs, rng, reference), "the processor's placeholders", len(wavs))


def fails_with(found: list[str], text: str, clips: int) -> bool:
    """One finding per clip, each saying ``text``."""
    return len(found) == clips and all(text in finding for finding in found)


def forward_without_gelu(self, encoder, mel, lengths):
    """The injected bug on our side: the projector's two linear layers without the activation between them."""
    projector = encoder.multi_modal_projector
    rows = masked_window_forward(encoder.audio_tower, mel, lengths, silence_per_window=True)
    return projector.linear_2(projector.linear_1(rows))


def hf_fault(get_audio_features, fault):
    """HF's get_audio_features with ``fault`` applied to its pooler_output (the injected bug on HF's side)."""

    def broken(self, *args, **kwargs):
        out = get_audio_features(self, *args, **kwargs)
        out.pooler_output = fault(out.pooler_output)
        return out

    return broken


def test_lm_needs_the_whole_models_config(tmp_path) -> None:
    """A bare tower export (model_type audioflamingo3_encoder) has no projector settings: returns='lm' says what
    to do; returns='tower' loads it."""
    from contaudio.encoders.cards import find_card

    card = find_card(TINY_AUDIOFLAMINGO3)
    (tmp_path / "config.json").write_text(json.dumps(card.encoder_config))
    card_extractor(TINY_AUDIOFLAMINGO3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"returns='lm' needs the whole model's config.*Use returns='tower'"):
        ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="random", skip_init_encoder=True)
    tower = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="random", returns="tower",
                              skip_init_encoder=True)  # fmt: skip
    assert tower.feature_dim() == card.encoder_config["hidden_size"]


def test_full_size_card_lm_width_and_flops() -> None:
    """The full-size card: the LM width (Qwen2.5-7B's 3584) and the projector's matmuls on top of the tower's."""
    lm = ContinuousAudioIO(encoder_hf_model_tag="nvidia/audio-flamingo-3-hf", weights="random", skip_init_encoder=True)
    tower = get_family("audioflamingo3")
    assert lm.feature_dim() == 3584 and lm.find_length(16000) == 25
    config = lm.family.module_config(lm.source.encoder_config, lm.source.model_config)
    extra = lm.family.flops(config, [3000]) - tower.flops(AudioFlamingo3EncoderConfig(), [3000])
    assert extra == pytest.approx(2 * 750 * (1280 * 3584 + 3584 * 3584))


HIDDEN_LAYERS = [[0, 1], [1], [1, 0], [-1]]  # [-1]: HF's last entry, the tower's pooled output, asked alone


@pytest.mark.parametrize("layers", HIDDEN_LAYERS, ids=str)
def test_hidden_states_equal_hfs_output_hidden_states(checkpoint, rng, layers) -> None:
    directory, model = checkpoint
    io = modes.mode_io(directory, "hidden_states", layers)
    assert len(io.encoder.layers) == max(io.layers)  # only the layers up to the deepest asked for
    assert isinstance(io.encoder.avg_pooler, torch.nn.Identity) == (DEPTH not in io.layers)
    assert modes.disagreements(io, modes.clips(rng), rng, hidden_reference(model, io.layers)) == []


def test_hidden_states_refuse_the_last_layer_with_others() -> None:
    with pytest.raises(ValueError, match=r"layers=\[0, 2\] mixes HF's last hidden state \(2: the tower's output"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", returns="hidden_states",
                          layers=[0, -1], skip_init_encoder=True)  # fmt: skip


def test_hidden_states_check_fails_when_either_side_breaks(checkpoint, rng, monkeypatch) -> None:
    """Our side: the first layer's input without positions; the pool and norm dropped from the last entry. HF's
    side: the tower's hidden states moved."""
    directory, model = checkpoint
    wavs = modes.clips(rng)[:2]
    io = modes.mode_io(directory, "hidden_states", [0, 1])
    with monkeypatch.context() as patch:
        patch.setattr(qwen2_audio_module, "embed_valid_rows", embed_without_positions)
        assert len(modes.disagreements(io, wavs, rng, hidden_reference(model, io.layers))) == len(wavs)
    with monkeypatch.context() as patch:
        patch.setattr(AudioFlamingo3HiddenStates, "trim", HiddenStatesView.trim)  # the pool and norm replaced
        last = modes.mode_io(directory, "hidden_states", [-1])
    assert len(modes.disagreements(last, wavs, rng, hidden_reference(model, last.layers))) == len(wavs)
    forward = AudioFlamingo3Encoder.forward

    moved = moved_hidden_states(forward)

    with monkeypatch.context() as patch:
        patch.setattr(AudioFlamingo3Encoder, "forward", moved)
        assert len(modes.disagreements(io, wavs, rng, hidden_reference(model, io.layers))) == len(wavs)


EMBED_VALID_ROWS = qwen2_audio_module.embed_valid_rows


def embed_without_positions(encoder, mel, lengths, silence_per_window):
    """The injected bug on our side: the first layer's input without the learned positions (rows 0..n-1 of every
    window, packed window after window)."""
    rows = EMBED_VALID_ROWS(encoder, mel, lengths, silence_per_window)
    positions = torch.cat([encoder.embed_positions.weight[:n] for n in rows.conv_rows.tolist()])
    return dataclasses.replace(rows, hidden=rows.hidden - positions.to(rows.hidden.dtype))
