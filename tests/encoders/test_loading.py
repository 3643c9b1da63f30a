"""Finding a checkpoint and loading ONLY its audio tower (shards, thinker-only, standalone, HF cache layout),
strict keys, the shipped cards, and the seeded random weights.

Loading the tower of a whole sharded checkpoint of every family (strict key equality) is in
``test_families.py``; safetensors-only, no remote code and the clear errors are in
``test_loading_hygiene.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import (
    TINY_QWEN_OMNI,
    assert_holds_tower,
    hf_audio_tower,
    save_tiny_qwen2_5_omni,
    tiny_audio_config,
)
from huggingface_hub import constants as hub_constants
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio import ContinuousAudioIO
from contaudio.encoders import all_cards, build_encoder, resolve
from contaudio.encoders.loading import INDEX_FILE, RANDOM_BIAS_STD, RANDOM_NORM_STD

BIGGER = {"d_model": 256, "encoder_attention_heads": 4, "encoder_ffn_dim": 512, "output_dim": 256}


def load(tag: str, **kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(tag), weights="pretrained", dtype="float32", **kwargs)


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


# --------------------------------------------------------------------------- random weights
def random_tower(weights: str, seed: int, overrides: dict | None = None) -> torch.nn.Module:
    """``build_encoder`` on the tiny Qwen2.5-Omni card's config with ``overrides``."""
    source = resolve(TINY_QWEN_OMNI, weights)
    source = dataclasses.replace(source, encoder_config={**source.encoder_config, **(overrides or {})})
    return build_encoder(source, weights, torch.float32, None, seed=seed)


def hf_init(seed: int, overrides: dict | None = None) -> Qwen2_5OmniAudioEncoder:
    """transformers' own init of the same tower, seeded the same way."""
    torch.manual_seed(seed)
    return Qwen2_5OmniAudioEncoder._from_config(
        Qwen2_5OmniAudioEncoderConfig(**{**tiny_audio_config(), **(overrides or {})})
    )


def test_random_hf_init_is_transformers_own_init() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random_hf_init", dtype="float32", seed=3)
    assert_holds_tower(io, hf_init(3).state_dict())


def test_random_weights_perturb_transformers_init() -> None:
    """weights="random": every matrix N(0, 1/fan_in), every bias N(0, 0.1), every norm weight N(1, 0.2);
    embeddings and buffers as transformers made them. A bigger tower, so the statistics are tight."""
    tower, reference = random_tower("random", 0, BIGGER), hf_init(0, BIGGER)
    matrices, biases, norms, kept = [], [], [], []
    for module_name, module in tower.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}".lstrip(".")
            if name == "bias":
                biases.append(param.flatten())
            elif isinstance(module, torch.nn.LayerNorm):
                norms.append(param.flatten())
            elif param.ndim >= 2 and not isinstance(module, torch.nn.Embedding):
                matrices.append(param.flatten() * param[0].numel() ** 0.5)  # scaled by sqrt(fan_in): N(0, 1)
            else:
                kept.append(full_name)
    assert kept == ["audio_bos_eos_token.weight"]  # the one embedding
    for values, mean, std in ((torch.cat(matrices), 0.0, 1.0), (torch.cat(biases), 0.0, RANDOM_BIAS_STD),
                              (torch.cat(norms), 1.0, RANDOM_NORM_STD)):  # fmt: skip
        assert abs(values.mean().item() - mean) < 0.05 * std and abs(values.std().item() / std - 1) < 0.1
    assert torch.equal(tower.audio_bos_eos_token.weight, reference.audio_bos_eos_token.weight)
    for name, buffer in reference.named_buffers():
        assert torch.equal(tower.get_buffer(name), buffer), name


def test_random_weights_are_seeded() -> None:
    first, again, other = (random_tower("random", seed).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["proj.weight"], other["proj.weight"])
    assert not torch.equal(first["proj.weight"], hf_init(0).state_dict()["proj.weight"])
