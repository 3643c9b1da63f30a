"""Audio-tower-only loading from full, thinker-only and standalone checkpoints; parity with HF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN_OMNI, hf_audio_tower, noise, save_tiny_qwen2_5_omni, tiny_audio_config
from huggingface_hub import constants as hub_constants
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio import ContinuousAudioIO
from contaudio.encoders import WeightsNotFoundError, all_cards
from contaudio.encoders.loading import INDEX_FILE

TOLERANCE = 1e-5


def load(tag: str, **kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(tag), weights="pretrained", dtype="float32", **kwargs)


def hf_features(model, io: ContinuousAudioIO, mels: list[np.ndarray]) -> list[torch.Tensor]:
    """HF's own thinker.get_audio_features on the processor's layout (mel padded, attention mask)."""
    lengths = torch.tensor([m.shape[0] for m in mels])
    padded = torch.zeros(len(mels), io.n_mels, int(lengths.max()))
    mask = torch.zeros(len(mels), int(lengths.max()), dtype=torch.long)
    for i, m in enumerate(mels):
        padded[i, :, : m.shape[0]] = torch.from_numpy(m).T
        mask[i, : m.shape[0]] = 1
    thinker = model.thinker if hasattr(model, "thinker") else model
    with torch.inference_mode():
        out = thinker.get_audio_features(padded, feature_attention_mask=mask).last_hidden_state
    return list(out.split(io.find_length(lengths * 160).tolist()))


def test_full_sharded_checkpoint_matches_hf_get_audio_features(tiny_omni_checkpoint, rng) -> None:
    directory, model = tiny_omni_checkpoint
    index = json.loads((directory / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2, "the fixture must be sharded"
    io = load(directory)
    assert io.feature_dim() == 48
    clips = [noise(rng, n) for n in (16000, 700, 70000, 33000)]
    mels = [io.preprocess((c, 16000))[1][1] for c in clips]
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.zeros(len(mels), int(lengths.max()), 128)
    for i, m in enumerate(mels):
        batch[i, : m.shape[0]] = torch.from_numpy(m)
    with torch.inference_mode():
        ours = io.encode_batch(batch, lengths)
    for a, b in zip(ours, hf_features(model, io, mels), strict=True):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=TOLERANCE)


def test_processor_features_equal_ours(tiny_omni_checkpoint, speech_clips) -> None:
    """The checkpoint's own WhisperFeatureExtractor (300 s padding) gives our mel on valid frames."""
    directory, _ = tiny_omni_checkpoint
    io = load(directory)
    extractor = WhisperFeatureExtractor.from_pretrained(directory)
    for wav in speech_clips.values():
        ref = extractor(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
        valid = int(ref["attention_mask"].sum())
        ours = io.preprocess((wav, 16000))[1][1]
        assert ours.shape[0] == valid
        assert np.abs(ours - ref["input_features"][0][:, :valid].T).max() <= 1e-4


def test_reads_only_audio_tower_shards(tiny_omni_checkpoint, tmp_path) -> None:
    """Delete every shard without audio-tower keys: loading still works (they are never opened)."""
    directory, model = tiny_omni_checkpoint
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    weight_map = json.loads((copy / INDEX_FILE).read_text())["weight_map"]
    audio_shards = {f for k, f in weight_map.items() if k.startswith("thinker.audio_tower.")}
    removed = set(weight_map.values()) - audio_shards
    assert removed, "fixture should have shards without audio keys"
    for shard in removed:
        (copy / shard).unlink()
    io = load(copy)
    torch.testing.assert_close(io.encoder.proj.weight, hf_audio_tower(model).proj.weight)


def test_thinker_only_and_standalone_and_single_file(tmp_path, rng) -> None:
    thinker_dir = tmp_path / "thinker"
    thinker = save_tiny_qwen2_5_omni(thinker_dir, thinker_only=True, max_shard_size="10GB")
    assert (thinker_dir / "model.safetensors").exists()  # single file
    io = load(thinker_dir)
    torch.testing.assert_close(io.encoder.conv1.weight, hf_audio_tower(thinker).conv1.weight)

    standalone_dir = tmp_path / "standalone"
    encoder = Qwen2_5OmniAudioEncoder(Qwen2_5OmniAudioEncoderConfig(**tiny_audio_config()))
    encoder.save_pretrained(standalone_dir)
    io = load(standalone_dir)  # no preprocessor_config.json: family default features (logged)
    torch.testing.assert_close(io.encoder.proj.weight, encoder.proj.weight)
    mel = torch.from_numpy(io.preprocess((noise(rng, 9000), 16000))[1][1])
    with torch.inference_mode():
        ref = encoder(mel.T, feature_lens=torch.tensor([mel.shape[0]])).last_hidden_state
        torch.testing.assert_close(io.encode_batch(mel[None], torch.tensor([mel.shape[0]]))[0], ref)


def test_loads_from_hf_cache_with_only_the_needed_files(tiny_omni_checkpoint, tmp_path, monkeypatch) -> None:
    """A hub id resolves through the HF cache layout; shards without audio keys may be absent."""
    directory, model = tiny_omni_checkpoint
    repo = "someorg/tiny-omni"
    snapshot = tmp_path / "hub" / "models--someorg--tiny-omni" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--someorg--tiny-omni" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny-omni" / "refs" / "main").write_text("abc123")
    weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
    needed = {f for k, f in weight_map.items() if k.startswith("thinker.audio_tower.")}
    for name in {"config.json", "preprocessor_config.json", INDEX_FILE, *needed}:
        shutil.copy(directory / name, snapshot / name)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    io = load(repo)
    torch.testing.assert_close(io.encoder.proj.weight, hf_audio_tower(model).proj.weight)


def test_missing_weights_error_says_how_to_run_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="weights='random'") as err:
        load("Qwen/Qwen2.5-Omni-7B")
    assert "Qwen/Qwen2.5-Omni-7B" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_missing_or_unexpected_keys_fail_loudly(tiny_omni_checkpoint, tmp_path) -> None:
    """A config that does not fit the weights must never leave random weights behind."""
    directory, _ = tiny_omni_checkpoint
    copy = tmp_path / "ckpt"
    shutil.copytree(directory, copy)
    config = json.loads((copy / "config.json").read_text())
    config["thinker_config"]["audio_config"]["encoder_layers"] = 3  # weights hold 2 layers
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing \['layers\.2\."):
        load(copy)


def test_tiny_card_has_no_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="weights='random'"):
        load(TINY_QWEN_OMNI)


def test_unknown_tag_lists_cards() -> None:
    with pytest.raises(ValueError, match="shipped cards") as err:
        load("not-a-dir-nor-hub-id")
    assert TINY_QWEN_OMNI in str(err.value)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B"])
def test_full_size_cards_declare_the_published_architecture(name: str) -> None:
    card = all_cards()[name]
    config = Qwen2_5OmniAudioEncoderConfig(**{k: v for k, v in card.encoder_config.items() if k != "model_type"})
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (1280, 32, 20)
    assert config.output_dim == {"Qwen/Qwen2.5-Omni-7B": 3584, "Qwen/Qwen2.5-Omni-3B": 2048}[name]
    assert card.feature_extractor["chunk_length"] == 300 and card.feature_extractor["feature_size"] == 128


@pytest.mark.slow
def test_full_size_architecture_builds_with_random_weights() -> None:
    io = ContinuousAudioIO(weights="random")
    assert io.feature_dim() == 3584
    assert 0.6e9 < sum(p.numel() for p in io.encoder.parameters()) < 0.7e9


def test_card_files_are_valid_json() -> None:
    for path in (Path(__file__).resolve().parents[2] / "contaudio" / "cards").glob("*.json"):
        json.loads(path.read_text())
