"""Loading hygiene: safetensors only, no remote code, strict keys, clear errors offline.

Booby-trapped checkpoints prove what never runs: a pickle whose unpickling creates a
marker file, and python files in the checkpoint directory whose import creates one.
"""

from __future__ import annotations

import json
import pickle
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import TINY_QWEN_OMNI, tiny_audio_config
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

import contaudio.encoders.loading as loading
from contaudio import ContinuousAudioIO
from contaudio.encoders import WeightsNotFoundError, all_cards
from contaudio.encoders.loading import resolve


def load(tag, **kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=str(tag), weights="pretrained", dtype="float32", **kwargs)


class CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(marker, "w")``: any loader that unpickles leaves the marker behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def no_unpickling(monkeypatch, tmp_path) -> Path:
    """torch.load raises if called; returns the marker path that a trapped pickle would create."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    return tmp_path / "UNPICKLED"


def save_standalone_encoder(directory: Path) -> Qwen2_5OmniAudioEncoder:
    """A tiny standalone audio-encoder checkpoint (config.json + model.safetensors)."""
    torch.manual_seed(0)
    encoder = Qwen2_5OmniAudioEncoder(Qwen2_5OmniAudioEncoderConfig(**tiny_audio_config()))
    encoder.save_pretrained(directory)
    return encoder


def write_trapped_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"proj.weight": CreatesFileWhenUnpickled(marker)}))


# --------------------------------------------------------------------------- pickle weights
def test_the_traps_spring(tmp_path) -> None:
    """The booby traps below are live: unpickling / importing them does leave the marker."""
    pickle_marker, code_marker = tmp_path / "UNPICKLED", tmp_path / "REMOTE_CODE_RAN"
    write_trapped_pickle(tmp_path / "trap.bin", pickle_marker)
    pickle.loads((tmp_path / "trap.bin").read_bytes())
    plant_remote_code(tmp_path, {}, code_marker)
    runpy.run_path(str(tmp_path / "modeling_evil.py"))
    assert pickle_marker.exists() and code_marker.exists()


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path, no_unpickling) -> None:
    directory = tmp_path / "pickle-only"
    save_standalone_encoder(directory)
    (directory / "model.safetensors").unlink()
    write_trapped_pickle(directory / "pytorch_model.bin", no_unpickling)
    with pytest.raises(WeightsNotFoundError) as err:
        load(directory)
    message = str(err.value)
    assert "only pickle weights (pytorch_model.bin), which contaudio never unpickles" in message
    assert "safe_serialization=True" in message and "weights='random'" in message
    assert not no_unpickling.exists()


def test_sharded_pickle_checkpoint_is_refused_without_unpickling(tmp_path, no_unpickling) -> None:
    directory = tmp_path / "pickle-sharded"
    save_standalone_encoder(directory)
    (directory / "model.safetensors").unlink()
    write_trapped_pickle(directory / "pytorch_model-00001-of-00001.bin", no_unpickling)
    index = {"weight_map": {"proj.weight": "pytorch_model-00001-of-00001.bin"}}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsNotFoundError, match=r"only pickle weights \(pytorch_model\.bin\.index\.json\)"):
        load(directory)
    assert not no_unpickling.exists()


def test_safetensors_win_over_pickle_next_to_them(tmp_path, no_unpickling) -> None:
    directory = tmp_path / "both"
    encoder = save_standalone_encoder(directory)
    write_trapped_pickle(directory / "pytorch_model.bin", no_unpickling)
    io = load(directory)
    torch.testing.assert_close(io.encoder.proj.weight, encoder.proj.weight)
    assert not no_unpickling.exists()


def test_index_pointing_at_a_pickle_shard_never_unpickles(tmp_path, no_unpickling) -> None:
    """A crafted safetensors index naming a .bin shard: the shard goes to safetensors, which refuses it."""
    directory = tmp_path / "crafted-index"
    save_standalone_encoder(directory)
    keys = list(load_file(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    write_trapped_pickle(directory / "evil.bin", no_unpickling)
    (directory / loading.INDEX_FILE).write_text(json.dumps({"weight_map": dict.fromkeys(keys, "evil.bin")}))
    with pytest.raises(Exception, match=r"(?i)header|deserializ") as err:
        load(directory)
    assert not isinstance(err.value, AssertionError)  # not torch.load
    assert not no_unpickling.exists()


# --------------------------------------------------------------------------- remote code
REMOTE_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('remote code ran')\n"


def plant_remote_code(directory: Path, config: dict, marker: Path) -> dict:
    """Add auto_map entries and the python files they name; importing either creates ``marker``."""
    for module in ("configuration_evil", "modeling_evil", "feature_extraction_evil"):
        (directory / f"{module}.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    return {
        **config,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
        "trust_remote_code": True,
    }


def test_auto_map_in_a_supported_checkpoint_is_ignored(tmp_path) -> None:
    directory = tmp_path / "auto-map"
    encoder = save_standalone_encoder(directory)
    marker = tmp_path / "REMOTE_CODE_RAN"
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(plant_remote_code(directory, config, marker)))
    features = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128}
    features["auto_map"] = {"AutoFeatureExtractor": "feature_extraction_evil.EvilFeatureExtractor"}
    (directory / "preprocessor_config.json").write_text(json.dumps(features))
    io = load(directory)
    torch.testing.assert_close(io.encoder.proj.weight, encoder.proj.weight)
    assert not marker.exists()
    assert not {"configuration_evil", "modeling_evil", "feature_extraction_evil"} & set(sys.modules)


def test_custom_model_type_is_refused_without_importing_its_code(tmp_path) -> None:
    directory = tmp_path / "custom-arch"
    save_standalone_encoder(directory)
    marker = tmp_path / "REMOTE_CODE_RAN"
    config = plant_remote_code(directory, {"model_type": "evil_audio_encoder"}, marker)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no encoder family handles model_type 'evil_audio_encoder'") as err:
        load(directory)
    assert "qwen2_5_omni" in str(err.value)  # lists the supported model types
    assert not marker.exists()


def test_custom_feature_extractor_is_refused_without_importing_its_code(tmp_path) -> None:
    directory = tmp_path / "custom-features"
    save_standalone_encoder(directory)
    marker = tmp_path / "REMOTE_CODE_RAN"
    plant_remote_code(directory, {}, marker)
    features = {
        "feature_extractor_type": "EvilFeatureExtractor",
        "auto_map": {"AutoFeatureExtractor": "feature_extraction_evil.EvilFeatureExtractor"},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(features))
    with pytest.raises(ValueError, match="unsupported feature extractor 'EvilFeatureExtractor'"):
        load(directory)
    assert not marker.exists()


# --------------------------------------------------------------------------- strict keys
def edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        pytest.param(lambda s: s.pop("proj.bias"), r"missing ['proj.bias'] (1)", id="missing-tensor"),
        pytest.param(
            lambda s: s.update({"extra.weight": torch.zeros(2)}), r"unexpected ['extra.weight'] (1)", id="extra-tensor"
        ),
        pytest.param(
            lambda s: s.update({"layers.2.fc1.weight": s["layers.1.fc1.weight"].clone()}),
            r"unexpected ['layers.2.fc1.weight'] (1)",
            id="extra-layer-tensor",
        ),
    ],
)
def test_missing_or_unexpected_tensors_fail_loudly(tmp_path, edit, fragment: str) -> None:
    directory = tmp_path / "edited"
    save_standalone_encoder(directory)
    edit_weights(directory, edit)
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        load(directory)
    assert "Is the checkpoint's config.json for these weights?" in str(err.value)


def test_config_with_fewer_layers_than_the_weights_fails_loudly(tmp_path) -> None:
    directory = tmp_path / "fewer-layers"
    save_standalone_encoder(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "encoder_layers": 1}))  # weights hold 2
    with pytest.raises(ValueError, match=r"unexpected \['layers\.1\."):
        load(directory)


def test_config_with_other_shapes_than_the_weights_fails_loudly(tmp_path) -> None:
    directory = tmp_path / "other-shapes"
    save_standalone_encoder(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "output_dim": 40}))  # weights: 48
    with pytest.raises(RuntimeError, match=r"size mismatch for proj\.weight"):
        load(directory)


# --------------------------------------------------------------------------- clear errors
def test_tiny_card_with_pretrained_weights_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=re.escape(f"card '{TINY_QWEN_OMNI}' is a test card without weights")) as e:
        load(TINY_QWEN_OMNI)
    assert "use weights='random'" in str(e.value)


def test_unknown_tag_lists_every_shipped_card() -> None:
    with pytest.raises(ValueError, match="not a local directory, a hub id") as err:
        load("no-such-model")
    assert all(name in str(err.value) for name in all_cards())


@pytest.mark.parametrize("tag", ["Qwen/Qwen2.5-Omni-7B", "someorg/uncached-model"])
def test_offline_uncached_hub_id_fails_at_once_and_names_the_way_out(tmp_path, monkeypatch, tag: str) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    real_download = loading.hf_hub_download
    calls = []

    def cache_only(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("local_files_only") is True, "asked the hub while HF_HUB_OFFLINE is set"
        return real_download(*args, **kwargs)

    monkeypatch.setattr(loading, "hf_hub_download", cache_only)
    with pytest.raises(WeightsNotFoundError) as err:
        load(tag)
    message = str(err.value)
    assert tag in message and "HF_HUB_OFFLINE is set" in message and "weights='random'" in message
    assert calls  # the cache was looked at


def test_random_weights_on_an_uncached_hub_id_say_what_they_still_need(tmp_path, monkeypatch) -> None:
    """weights='random' was passed already: the way out is a shipped card (the config), not weights='random'."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve("someorg/uncached-model", "random")
    assert "need the model's config" in str(err.value) and "weights='random'" not in str(err.value)


@pytest.mark.parametrize(
    ("tag", "suggestion"),
    [
        ("contaudio/tiny-qwen25-omni", "contaudio/tiny-qwen2.5-omni"),
        ("contaudio/TINY-WHISPER", "contaudio/tiny-whisper"),
        ("contaudio/nothing-like-it", None),
    ],
)
def test_a_card_name_that_is_not_shipped_is_named_with_the_closest(tag: str, suggestion: str | None) -> None:
    """The ``contaudio/`` names are the shipped test cards, never a hub repo: no hub lookup, no download advice."""
    with pytest.raises(ValueError, match="no shipped card is named") as err:
        resolve(tag, "random")
    message = str(err.value)
    assert (f"did you mean {suggestion!r}" in message) if suggestion else "did you mean" not in message
    assert "contaudio cards" in message and "hf download" not in message
