"""Every repository layout a shipped card names loads: tiny directories laid out exactly as those repositories are
(config.json nesting, weight key prefixes, processor files), loaded with ``ContinuousAudioIO(weights="pretrained")``.

Where the layouts come from (public record; see the families' ``weight_prefixes`` comments):
- Qwen's own Qwen3-ASR repos (Qwen/Qwen3-ASR-0.6B, -1.7B): ``model_type`` ``qwen3_asr`` with the audio config under
  ``thinker_config.audio_config``, weights under ``thinker.*`` with the projector inside the tower
  (``thinker.audio_tower.proj1/proj2``), Whisper's extractor in ``preprocessor_config.json`` (QwenLM/Qwen3-ASR
  ``qwen_asr/core/transformers_backend``; transformers' ``convert_qwen3_asr_to_hf.py`` undoes exactly this).
- Repositories converted before transformers 5 (Voxtral, Audio Flamingo 3 -hf, GLM-ASR-Nano, Qwen2-Audio): the tower
  under ``audio_tower.*``, the projector under ``multi_modal_projector.*``, the LM under ``language_model.*``;
  transformers 5 renames them on load (``conversion_mapping.py``: these model types use qwen2_audio's renames).
- Granite Speech: ``encoder.*`` / ``projector.*`` / ``language_model.*`` (``conversion_mapping.py``, granite_speech).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import (
    TINY_QWEN3_ASR,
    assert_holds_tower,
    hf_audio_tower,
    read_weights,
    relayout,
    rename_prefixes,
    save_tiny_audioflamingo3,
    save_tiny_glmasr,
    save_tiny_granite_speech,
    save_tiny_qwen2_audio,
    save_tiny_qwen3_asr,
    save_tiny_voxtral,
)

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family

QWEN3_ASR_OFFICIAL_KEYS = {  # transformers' key -> Qwen's own (convert_qwen3_asr_to_hf.py, reversed)
    "model.multi_modal_projector.linear_1.": "thinker.audio_tower.proj1.",
    "model.multi_modal_projector.linear_2.": "thinker.audio_tower.proj2.",
    "model.language_model.": "thinker.model.",
    "lm_head.": "thinker.lm_head.",
    "model.": "thinker.",
}
LEGACY_KEYS = {  # transformers 5's key -> the one repositories converted with transformers 4 hold
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}
GRANITE_LEGACY_KEYS = {
    "model.encoder.": "encoder.",
    "model.projector.": "projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}


def load(directory) -> ContinuousAudioIO:
    """The tower (``returns="tower"``: the layouts of the tower's keys are what these tests check)."""
    return ContinuousAudioIO(
        encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32", returns="tower"
    )


def qwen3_asr_official_config(hf_config: dict) -> dict:
    """transformers' Qwen3-ASR config.json as Qwen's own repos nest it (``thinker_config``), with the audio config's
    own model type and the fields Qwen's config class writes that transformers' drops."""
    audio = {**hf_config["audio_config"], "model_type": "qwen3_asr_audio_encoder", "max_source_positions": 1500,
             "conv_chunksize": 500}  # fmt: skip
    thinker = {"audio_config": audio, "text_config": hf_config["text_config"], "model_type": "qwen3_asr_thinker",
               "audio_token_id": hf_config["audio_token_id"]}  # fmt: skip
    return {"model_type": "qwen3_asr", "architectures": ["Qwen3ASRForConditionalGeneration"],
            "thinker_config": thinker, "support_languages": ["English"]}  # fmt: skip


@pytest.fixture(scope="module")
def qwen3_asr_dirs(tmp_path_factory):
    """transformers' layout (saved by transformers: the -hf repos) and Qwen's own, holding the same weights."""
    root = tmp_path_factory.mktemp("qwen3_asr")
    model = save_tiny_qwen3_asr(root / "hf")
    official = root / "official"
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    relayout(root / "hf", official, rename_prefixes(QWEN3_ASR_OFFICIAL_KEYS), qwen3_asr_official_config(hf_config))
    return root / "hf", official, model


def test_qwen3_asr_official_layout_loads(qwen3_asr_dirs) -> None:
    hf_dir, official, model = qwen3_asr_dirs
    keys = read_weights(official)
    assert any(key.startswith("thinker.audio_tower.proj1.") for key in keys)  # the projector sits in the tower
    assert not any(key.startswith("model.") for key in keys)
    reference = hf_audio_tower(model).state_dict()
    for directory in (hf_dir, official):
        io = load(directory)
        assert_holds_tower(io, reference, str(directory))
        assert io.feature_dim() == get_family("qwen3_asr").output_dim(
            get_family("qwen3_asr").encoder_config(json.loads((hf_dir / "config.json").read_text()))
        )


def test_qwen3_asr_official_layout_needs_the_thinker_entries(qwen3_asr_dirs, monkeypatch) -> None:
    """Fault injection: without the thinker config path / the thinker weight layout, Qwen's own repo is refused."""
    _, official, _ = qwen3_asr_dirs
    family = type(get_family("qwen3_asr"))
    monkeypatch.setitem(family.config_paths, "qwen3_asr", ("audio_config",))
    with pytest.raises(ValueError, match=r"config\.json has no audio_config"):
        load(official)
    monkeypatch.undo()
    monkeypatch.setattr(family, "weight_prefixes", ("model.audio_tower.", "audio_tower.", "thinker.audio_tower.", ""))
    with pytest.raises(ValueError, match=r"unexpected \['proj1\."):  # the projector is not the tower
        load(official)


LEGACY = {
    "voxtral": (save_tiny_voxtral, "VoxtralForConditionalGeneration", LEGACY_KEYS),
    "audioflamingo3": (save_tiny_audioflamingo3, "AudioFlamingo3ForConditionalGeneration", LEGACY_KEYS),
    "glmasr": (save_tiny_glmasr, "GlmAsrForConditionalGeneration", LEGACY_KEYS),
    "qwen2_audio": (save_tiny_qwen2_audio, "Qwen2AudioForConditionalGeneration", LEGACY_KEYS),
    "granite_speech": (save_tiny_granite_speech, "GraniteSpeechForConditionalGeneration", GRANITE_LEGACY_KEYS),
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_transformers_4_layout_loads(name: str, tmp_path) -> None:
    """The keys of repositories converted with transformers 4 (what transformers 5 itself renames on load): HF reads
    this directory back as the same model, and contaudio loads the same tower from it."""
    import transformers

    save, model_class, mapping = LEGACY[name]
    model = save(tmp_path / "saved")
    legacy = tmp_path / "legacy"
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    relayout(tmp_path / "saved", legacy, rename_prefixes(mapping), config)
    assert not any(key.startswith("model.") for key in read_weights(legacy))
    again = getattr(transformers, model_class).from_pretrained(legacy, dtype=torch.float32)
    theirs = {key: value for key, value in again.state_dict().items() if "audio_tower" in key or "encoder" in key}
    assert theirs and all(torch.equal(value, model.state_dict()[key]) for key, value in theirs.items())
    io = load(legacy)
    reference = model.model.audio_tower.state_dict() if name == "granite_speech" else hf_audio_tower(model).state_dict()
    assert_holds_tower(io, reference, name)


def test_tiny_qwen3_asr_card_is_what_the_saved_checkpoint_holds(qwen3_asr_dirs) -> None:
    from contaudio.encoders import find_card

    hf_dir, official, _ = qwen3_asr_dirs
    family = get_family("qwen3_asr")
    card = {k: v for k, v in find_card(TINY_QWEN3_ASR).encoder_config.items() if k != "model_type"}
    for directory in (hf_dir, official):
        found = family.encoder_config(json.loads((directory / "config.json").read_text()))
        assert {key: found[key] for key in card} == card
