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


# --------------------------------------------------------------------------- feature-extractor settings
def save_processor(directory, name: str) -> None:
    """A transformers 5 processor saved by transformers itself: only processor_config.json (the extractor's settings
    nested inside), tokenizer files, no preprocessor_config.json. Settings differ from the family's defaults."""
    import transformers
    from helpers.checkpoints import word_tokenizer

    from contaudio.features.granite_speech import GraniteSpeechFeatures

    whisper = transformers.WhisperFeatureExtractor
    build = {
        "audioflamingo3": lambda: transformers.AudioFlamingo3Processor(
            whisper(feature_size=80), word_tokenizer(["<sound>"])
        ),
        "qwen2_audio": lambda: transformers.Qwen2AudioProcessor(
            whisper(feature_size=128, chunk_length=300), word_tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
        ),
        "qwen3_asr": lambda: transformers.Qwen3ASRProcessor(
            transformers.Qwen3ASRFeatureExtractor(feature_size=80),
            word_tokenizer(
                ["<|audio_pad|>", "<|audio_start|>", "<|audio_end|>"],
                audio_token="<|audio_pad|>",
                audio_bos_token="<|audio_start|>",
                audio_eos_token="<|audio_end|>",
            ),
        ),
        "glmasr": lambda: transformers.GlmAsrProcessor(whisper(feature_size=80), word_tokenizer(["<|pad|>"])),
        "granite_speech": lambda: transformers.GraniteSpeechProcessor(
            GraniteSpeechFeatures(projector_window_size=10).hf_extractor(), word_tokenizer(["<|audio|>"])
        ),
    }[name]
    build().save_pretrained(directory)
    assert not (Path(directory) / "preprocessor_config.json").exists()


STANDALONE_TYPES = {  # family -> the model_type of a checkpoint that is just its tower (config.json at the top)
    "audioflamingo3": "audioflamingo3_encoder",
    "qwen2_audio": "qwen2_audio_encoder",
    "qwen3_asr": "qwen3_asr_encoder",
    "glmasr": "glmasr_encoder",
    "granite_speech": "granite_speech",
}


def hf_features(directory, family):
    """The featurizer of the extractor transformers' AutoFeatureExtractor builds from ``directory``."""
    from transformers import AutoFeatureExtractor

    from contaudio.features import featurizer_from_dict
    from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech

    with torchaudio_for_hf_granite_speech():
        extractor = AutoFeatureExtractor.from_pretrained(directory, local_files_only=True)
    return family.adapt_features(featurizer_from_dict(extractor.to_dict()))


@pytest.mark.parametrize("name", sorted(STANDALONE_TYPES))
def test_features_come_from_where_auto_feature_extractor_finds_them(name: str, tmp_path) -> None:
    from contaudio.encoders import get_family

    family = get_family(name)
    save_processor(tmp_path, name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": STANDALONE_TYPES[name]}))
    ours = resolve(str(tmp_path), "pretrained").features
    assert ours == hf_features(tmp_path, family)
    assert ours != family.adapt_features(family.default_features)  # the test would not see a fallback otherwise


def test_nested_settings_win_over_preprocessor_config_as_in_transformers(tmp_path) -> None:
    """Both files, different settings: transformers reads processor_config.json's; so must contaudio. Fault
    injection on both sides: with the nested entry dropped, both read preprocessor_config.json instead."""
    from transformers import WhisperFeatureExtractor

    from contaudio.encoders import get_family

    family = get_family("audioflamingo3")
    save_processor(tmp_path, "audioflamingo3")  # 80 mels, nested
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path)  # 128 mels, preprocessor_config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "audioflamingo3_encoder"}))
    assert resolve(str(tmp_path), "pretrained").features.n_mels == 80 == hf_features(tmp_path, family).n_mels
    processor = json.loads((tmp_path / "processor_config.json").read_text())
    processor.pop("feature_extractor")
    (tmp_path / "processor_config.json").write_text(json.dumps(processor))
    assert resolve(str(tmp_path), "pretrained").features.n_mels == 128 == hf_features(tmp_path, family).n_mels


def test_transformers_5_processor_checkpoint_loads_with_its_features(tmp_path, rng, monkeypatch) -> None:
    """AudioFlamingo3Processor(WhisperFeatureExtractor(feature_size=80), tok) next to an 80-mel tower: loads, and
    preprocess gives 80 channels. Fault injection: reading only preprocessor_config.json (as before) fails."""
    from helpers.checkpoints import TINY_AUDIOFLAMINGO3, card_encoder_config
    from transformers import AudioFlamingo3EncoderConfig
    from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder

    from contaudio.encoders import loading

    torch.manual_seed(0)
    encoder = AudioFlamingo3Encoder(AudioFlamingo3EncoderConfig(**{**card_encoder_config(TINY_AUDIOFLAMINGO3),
                                                                  "num_mel_bins": 80}))  # fmt: skip
    encoder.save_pretrained(tmp_path)
    save_processor(tmp_path, "audioflamingo3")
    io = load(tmp_path, returns="tower")  # an encoder export: no projector for "lm"
    mel = io.preprocess((noise(rng, 9000), 16000))[1][1]
    assert mel.shape[1] == 80
    torch.testing.assert_close(io.encoder.conv1.weight, encoder.conv1.weight)
    monkeypatch.setattr(loading, "PROCESSOR_FILE", "no_such_file.json")
    with pytest.raises(Exception, match="80"):
        load(tmp_path, returns="tower")


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        pytest.param({"processor_config.json": {"processor_class": "X"}}, "finds no feature-extractor settings",
                     id="processor-without-extractor"),
        pytest.param({"processor_config.json": "{not json"}, "finds no feature-extractor settings", id="bad-json"),
        pytest.param({"processor_config.json": {"feature_extractor": {"feature_extractor_type": "EvilExtractor"}}},
                     r"processor_config.json \(key 'feature_extractor'\).*unsupported feature extractor 'EvilExtr",
                     id="unsupported-type"),
        pytest.param({"preprocessor_config.json": {"feature_extractor_type": "WhisperFeatureExtractor",
                                                   "dither": 1.0}},
                     r"preprocessor_config.json: contaudio cannot reproduce.*dither", id="unreproducible-setting"),
    ],
)  # fmt: skip
def test_unreadable_feature_settings_are_refused(write: dict, fragment: str, tmp_path) -> None:
    """A file that is there but gives no settings contaudio can reproduce is refused (never the family default)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni_audio_encoder"}))
    for name, content in write.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=fragment) as err:
        resolve(str(tmp_path), "pretrained")
    assert str(tmp_path) in str(err.value)


def test_no_feature_files_fall_back_to_the_family_default_with_a_warning(tmp_path, caplog) -> None:
    from contaudio.encoders import get_family

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni_audio_encoder"}))
    with caplog.at_level("WARNING", logger="contaudio.encoders.loading"):
        features = resolve(str(tmp_path), "pretrained").features
    family = get_family("qwen2_5_omni")
    assert features == family.adapt_features(family.default_features)
    assert "neither processor_config.json nor preprocessor_config.json" in caplog.text


def test_extractor_type_missing_is_picked_as_transformers_picks_it(tmp_path) -> None:
    """No feature_extractor_type in the settings: transformers takes the one of config.json's model_type."""
    from transformers import AutoFeatureExtractor

    settings = {"feature_size": 128, "sampling_rate": 16000}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    config = {"model_type": "gemma3n", "audio_config": card_encoder_config_of("contaudio/tiny-gemma3n")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = resolve(str(tmp_path), "pretrained").features
    assert type(ours).extractor_type == type(AutoFeatureExtractor.from_pretrained(tmp_path)).__name__


def card_encoder_config_of(tag: str) -> dict:
    return dict(all_cards()[tag].encoder_config)
