"""Voxtral: ``returns="lm"`` (the default) against ``get_audio_features(...).pooler_output`` of Voxtral's own model
and its processor's windows, the placeholder count, both checkpoint layouts of the projector; the audio tower
(``"tower"``) on clips longer than 30 s, the long-clip policy, and a bare encoder export; ``"hidden_states"``
against the model's ``output_hidden_states``.

Voxtral's processor pads the audio to a multiple of 30 s and encodes each window on its own, which
is contaudio's ``long_clip="windows"``: clips of several windows are checked against
``VoxtralForConditionalGeneration.get_audio_features`` on the processor's windows. The forward is
Whisper's (its clip-end effect is shown in ``test_whisper.py``); what every family shares
(loading a whole checkpoint, oracle, lengths, padded batches, FLOPs vs torch) is in
``test_families.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.batches import noise_padded_batch
from helpers.checkpoints import (
    TINY_VOXTRAL,
    assert_holds_tower,
    card_extractor,
    hf_audio_tower,
    read_weights,
    relayout,
    rename_prefixes,
)
from helpers.families import voxtral_rows
from helpers.faults import moved_hidden_states
from torch.utils.flop_counter import FlopCounterMode
from transformers import VoxtralConfig, VoxtralProcessor
from transformers.models.voxtral.modeling_voxtral import VoxtralEncoder, VoxtralModel

from contaudio import ContinuousAudioIO
from contaudio.encoders.voxtral import (
    TOKENS_PER_WINDOW,
    VoxtralLM,
    check_reshape,
    processor_windows,
    voxtral_lm_rows,
    voxtral_processor,
)
from contaudio.encoders.windows import WINDOW_FRAMES, ClipTooLongError, WindowFamily

ATOL = 1e-5  # fp32, same weights; our mel vs the extractor's differ by ~1e-6
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480000 = 30 s: Voxtral's processor pads audio to a multiple of this
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are then silence in HF's features too
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_voxtral_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_voxtral_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             returns="tower", long_clip="windows")  # fmt: skip


@pytest.mark.parametrize("seconds", [45, 61])
def test_long_clips_equal_voxtrals_processor_and_model(io, tiny_voxtral_checkpoint, rng, seconds: int) -> None:
    """Clips of two and three windows, ending in silence as speech does (see contaudio.encoders.windows)."""
    _, model = tiny_voxtral_checkpoint
    wav = np.concatenate([noise(rng, seconds * 16000, 0.05), np.zeros(TAIL_SILENCE_SAMPLES, np.float32)])
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    with torch.inference_mode():
        (ours,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        ref = voxtral_rows(model, wav)
    assert ours.shape == ref.shape == (rows, io.feature_dim()) and rows == io.find_length(len(wav))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_long_clip_raises_under_the_default_policy() -> None:
    strict = ContinuousAudioIO(encoder_hf_model_tag=TINY_VOXTRAL, weights="random", dtype="float32", returns="tower")
    assert strict.find_length(WINDOW_SAMPLES) == 1500
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        strict.find_length(WINDOW_SAMPLES + 1)
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        strict.encode_batch(torch.zeros(1, WINDOW_FRAMES + 1, 128), torch.tensor([WINDOW_FRAMES + 1]))


def test_loads_a_bare_encoder_export_from_one_file(tiny_voxtral_checkpoint, tmp_path) -> None:
    """The shared suite loads the sharded full checkpoint; here a ``voxtral_encoder`` export with bare keys."""
    tower = hf_audio_tower(tiny_voxtral_checkpoint[1])
    tower.save_pretrained(tmp_path)
    card_extractor(TINY_VOXTRAL).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32", returns="tower")
    assert io.family.name == "voxtral"
    assert_holds_tower(io, tower.state_dict())
    with pytest.raises(ValueError, match=r"returns='lm' needs the whole Voxtral model's config.*returns='tower'"):
        ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")  # lm: default


# ------------------------------------------------------------------------------------------------ returns="lm"
LM_SAMPLES = [1601, 40000, WINDOW_SAMPLES - TAIL_SILENCE_SAMPLES, WINDOW_SAMPLES + 16000, 61 * 16000]
MODULE_NAMES = {
    "audio_tower.": "model.audio_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
    "language_model.": "model.language_model.",
}  # fmt: skip  (the hub's names -> transformers 5's modules)


@pytest.fixture(scope="module")
def lm(tiny_voxtral_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_voxtral_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


def ends_in_silence(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    return np.concatenate([noise(rng, num_samples, 0.05), np.zeros(TAIL_SILENCE_SAMPLES, np.float32)])


def noise_padded(io: ContinuousAudioIO, wavs: list[np.ndarray], rng) -> tuple[list[int], list[torch.Tensor]]:
    """preprocess each clip, one batch padded with noise past every clip's end, encode_batch: (T per clip, rows)."""
    processed = [io.preprocess((wav, 16000))[1] for wav in wavs]
    mel, lengths = noise_padded_batch([m for _, m in processed], 13, rng)
    with torch.inference_mode():
        return [rows for rows, _ in processed], io.encode_batch(mel, lengths)


def hf_pooler_output(model, wav: np.ndarray) -> torch.Tensor:
    """Voxtral's whole model: ``get_audio_features(...).pooler_output`` on its processor's windows for the clip."""
    with torch.inference_mode():
        return model.get_audio_features(processor_windows(card_extractor(TINY_VOXTRAL), wav)).pooler_output


def check_lm(io: ContinuousAudioIO, model, wavs: list[np.ndarray], rng) -> None:
    """find_length == preprocess's T == encode_batch's rows == HF's rows (whole model and the family's oracle) ==
    the processor's placeholders; values within ATOL of the whole model's."""
    counts, outs = noise_padded(io, wavs, rng)
    extractor = io.features.hf_extractor()
    for wav, rows, ours in zip(wavs, counts, outs, strict=True):
        ref = hf_pooler_output(model, wav)
        with torch.inference_mode():
            oracle = io.family.oracle(io.encoder, extractor, wav)
        assert oracle.error is None, oracle.error
        assert io.find_length(len(wav)) == rows == ours.shape[0] == ref.shape[0] == oracle.count, len(wav)
        assert oracle.placeholders == rows, (len(wav), oracle.placeholders, rows)
        assert ours.shape == (rows, model.config.text_config.hidden_size) == (rows, io.feature_dim())
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(oracle.rows, ref, atol=ATOL, rtol=0)


def test_lm_is_voxtrals_pooler_output_counted_as_its_placeholders(lm, tiny_voxtral_checkpoint, rng) -> None:
    """0.1 s to 61 s in one noise-padded batch: every window whole (the padding's rows too), 375 rows each."""
    assert lm.returns == "lm" and isinstance(lm.family, VoxtralLM)
    assert set(lm.encoder.state_dict()) == {k for k in tiny_voxtral_checkpoint[1].model.state_dict() if
                                            k.startswith(("audio_tower.", "multi_modal_projector."))}  # fmt: skip
    check_lm(lm, tiny_voxtral_checkpoint[1], [ends_in_silence(rng, n) for n in LM_SAMPLES], rng)


def test_lm_check_fails_when_either_side_breaks(lm, tiny_voxtral_checkpoint, rng, monkeypatch) -> None:
    """Ours: a row moved out of the tower, or the tower's rule; HF's: get_audio_features dropping a row, its
    processor adding a window."""
    model, wavs = tiny_voxtral_checkpoint[1], [ends_in_silence(rng, 40000)]
    check_lm(lm, model, wavs, rng)  # the baseline passes
    window_forward = WindowFamily.window_forward
    get_audio_features = VoxtralModel.get_audio_features
    retrieve = VoxtralProcessor._retrieve_input_features
    faults = {
        "ours: rows shifted": (WindowFamily, "window_forward",
                               lambda self, *a: (lambda h, f: (h.roll(1, dims=1), f))(*window_forward(self, *a))),
        "ours: the tower's rule": (VoxtralLM, "rows", staticmethod(lambda m: voxtral_lm_rows(m) // 2)),
        "HF: a row dropped": (VoxtralModel, "get_audio_features",
                              lambda self, *a, **k: drop_last_row(get_audio_features(self, *a, **k))),
        "HF: a window added": (VoxtralProcessor, "_retrieve_input_features",
                               lambda self, *a, **k: (lambda f: torch.cat([f, f]))(retrieve(self, *a, **k))),
    }  # fmt: skip
    for name, (owner, attribute, fault) in faults.items():
        with monkeypatch.context() as patch:
            patch.setattr(owner, attribute, fault)
            with pytest.raises((AssertionError, RuntimeError)):  # RuntimeError: encode_batch's own row check
                check_lm(lm, model, wavs, rng)
                pytest.fail(f"{name}: not caught")


def drop_last_row(out):
    out.pooler_output = out.pooler_output[:-1]
    return out


@pytest.mark.parametrize("num_samples", [1, 160, 161, WINDOW_SAMPLES - 1, WINDOW_SAMPLES, WINDOW_SAMPLES + 1,
                                         2 * WINDOW_SAMPLES + 160])  # fmt: skip
def test_lm_rule_counts_the_processors_windows(num_samples: int) -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_VOXTRAL, weights="random", long_clip="windows",
                           skip_init_encoder=True)  # fmt: skip
    windows = processor_windows(card_extractor(TINY_VOXTRAL), np.zeros(num_samples, np.float32)).shape[0]
    assert io.find_length(num_samples) == TOKENS_PER_WINDOW * windows == -(-num_samples // WINDOW_SAMPLES) * 375
    assert io.family.hf_placeholders(card_extractor(TINY_VOXTRAL), np.zeros(num_samples, np.float32)) == (
        io.find_length(num_samples)
    )


def mistral_common_tokens(num_samples: int, chunk_length_s: float | None = 30.0) -> int:
    """The audio tokens mistral-common's encoder (Voxtral's tokenizer) writes for a clip, with Voxtral's tekken
    audio settings (16 kHz, frame_rate 12.5, 30 s chunks, 128 mels, hop 160, window 400)."""
    audio = pytest.importorskip("mistral_common.tokens.tokenizers.audio")
    config = audio.AudioConfig(sampling_rate=16000, frame_rate=12.5, chunk_length_s=chunk_length_s,
                               encoding_config=audio.AudioSpectrogramConfig(num_mel_bins=128, hop_length=160,
                                                                            window_size=400))  # fmt: skip
    encoder = audio.AudioEncoder(config, audio.SpecialAudioIDs(24, 25, None, None, None))
    return config.num_audio_tokens(encoder.pad(np.zeros(num_samples, np.float32), 16000).shape[-1])


@pytest.mark.parametrize("num_samples", [1, 160, 16000, WINDOW_SAMPLES, WINDOW_SAMPLES + 1, 3 * WINDOW_SAMPLES - 7])
def test_placeholders_equal_mistral_commons_count(num_samples: int) -> None:
    """Skipped where mistral-common (Voxtral's tokenizer, which writes the placeholders) is not installed."""
    ours = VoxtralLM().hf_placeholders(card_extractor(TINY_VOXTRAL), np.zeros(num_samples, np.float32))
    assert ours == mistral_common_tokens(num_samples)
    if num_samples < WINDOW_SAMPLES:  # the injected fault: mistral-common without its 30 s chunks counts other tokens
        assert ours != mistral_common_tokens(num_samples, chunk_length_s=None)


def test_lm_loads_the_hub_and_the_module_layouts(tiny_voxtral_checkpoint, tmp_path) -> None:
    """The hub's keys (what transformers 5.25 saves) and transformers 5's module names (``model.*``); only the tower
    and the projector are read."""
    directory, model = tiny_voxtral_checkpoint
    config = json.loads((directory / "config.json").read_text())
    relayout(directory, tmp_path, rename_prefixes(MODULE_NAMES), config)
    assert any(key.startswith("model.multi_modal_projector.") for key in read_weights(tmp_path))
    reference = {k: v for k, v in model.model.state_dict().items() if k.startswith(("audio_tower.", "multi_modal"))}
    for where in (directory, tmp_path):
        io = ContinuousAudioIO(encoder_hf_model_tag=str(where), weights="pretrained", dtype="float32")
        assert_holds_tower(io, reference, str(where))


def test_lm_flop_rule_equals_torchs_counter() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_VOXTRAL, weights="random", dtype="float32",
                           attn_implementation="eager", long_clip="windows")  # fmt: skip
    lengths = [1, 2999, 3001]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for m in lengths:
            io.family.reference_forward(io.encoder, torch.zeros(1, m, 128), torch.tensor([m]))
    module_config = io.family.module_config(io.source.encoder_config, io.source.model_config)
    assert io.family.flops(io.encoder.config, torch.tensor(lengths)) == counter.get_total_flops()
    assert io.family.flops(module_config, lengths) == counter.get_total_flops()


def test_lm_refuses_a_reshape_its_rule_cannot_count() -> None:
    config = VoxtralConfig(audio_config={"model_type": "voxtral_encoder", "hidden_size": 32, "intermediate_size": 64,
                                         "num_hidden_layers": 1, "num_attention_heads": 2},
                           text_config={"hidden_size": 32})  # fmt: skip
    with pytest.raises(ValueError, match="groups 2 tower rows per LM row; contaudio's length rule needs 4"):
        check_reshape(config)


def test_the_processor_is_hfs_with_its_audio_token() -> None:
    processor = voxtral_processor(card_extractor(TINY_VOXTRAL))
    assert processor.audio_token_id == 24 and processor.audio_token == "[AUDIO]"


# ------------------------------------------------------------------------------------------ returns="hidden_states"
def hf_hidden_states(model, wav: np.ndarray, layers: tuple[int, ...]) -> torch.Tensor:
    """Voxtral's whole model: ``get_audio_features(..., output_hidden_states=True)`` on its processor's windows, each
    window cut to its valid rows by Whisper's helper: ``[L, rows, d]``."""
    out = card_extractor(TINY_VOXTRAL)(wav, sampling_rate=16000, padding=True, truncation=False,
                                       pad_to_multiple_of=WINDOW_SAMPLES, return_attention_mask=True,
                                       return_tensors="pt")  # fmt: skip
    frames = int(out["attention_mask"].sum())
    with torch.inference_mode():
        states = model.get_audio_features(processor_windows(card_extractor(TINY_VOXTRAL), wav),
                                          output_hidden_states=True).hidden_states  # fmt: skip
    valid = [(min(WINDOW_FRAMES, frames - s) - 1) // 2 + 1 for s in range(0, frames, WINDOW_FRAMES)]
    return torch.stack([torch.cat([states[i][k, :n] for k, n in enumerate(valid)]) for i in layers])


def check_hidden_states(io: ContinuousAudioIO, model, wavs: list[np.ndarray], rng) -> None:
    counts, outs = noise_padded(io, wavs, rng)
    extractor = io.features.hf_extractor()
    for wav, rows, ours in zip(wavs, counts, outs, strict=True):
        ref = hf_hidden_states(model, wav, io.layers)
        with torch.inference_mode():
            oracle = io.family.oracle(io.encoder, extractor, wav)
        assert oracle.error is None, oracle.error
        assert io.find_length(len(wav)) == rows == ours.shape[1] == ref.shape[1] == oracle.count, len(wav)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(oracle.rows, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layers", [[0, 1, 2], [-1], [1]], ids=str)
def test_hidden_states_equal_the_models_output_hidden_states(tiny_voxtral_checkpoint, rng, layers) -> None:
    directory, model = tiny_voxtral_checkpoint
    io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                           returns="hidden_states", layers=layers, long_clip="windows")  # fmt: skip
    assert io.feature_dim() == 32 and len(io.encoder.layers) == max(io.layers)
    check_hidden_states(io, model, [ends_in_silence(rng, n) for n in (1601, WINDOW_SAMPLES + 16000)], rng)


def test_hidden_states_check_fails_when_hfs_side_breaks(tiny_voxtral_checkpoint, rng, monkeypatch) -> None:
    """HF's encoder moving its hidden states fails the check (our side's faults: ``test_whisper.py``, same code)."""
    directory, model = tiny_voxtral_checkpoint
    io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                           returns="hidden_states", layers=[0, 2])  # fmt: skip
    wavs = [ends_in_silence(rng, 16000)]
    check_hidden_states(io, model, wavs, rng)
    forward = VoxtralEncoder.forward

    moved = moved_hidden_states(forward)

    monkeypatch.setattr(VoxtralEncoder, "forward", moved)
    with pytest.raises(AssertionError):
        check_hidden_states(io, model, wavs, rng)
