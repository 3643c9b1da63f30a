"""Shared fixtures: tiny encoders with random weights and tiny checkpoints saved to disk.

Nothing here touches a network: HF_HUB_OFFLINE is set for the whole session so a
cache miss fails at once instead of retrying for ~25 s.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import pytest
import soundfile
import soxr
import torch

from contaudio import ContinuousAudioIO

TINY_QWEN_OMNI = "contaudio/tiny-qwen2.5-omni"
SAMPLE_RATE = 16000


def tiny_audio_config() -> dict:
    """The tiny card's Qwen2.5-Omni audio config, for building full checkpoints around it."""
    from contaudio.encoders import find_card

    config = dict(find_card(TINY_QWEN_OMNI).encoder_config)
    config.pop("model_type")
    return config


def save_tiny_qwen2_5_omni(directory, *, thinker_only: bool = False, max_shard_size: str = "40KB") -> None:
    """Save a tiny random FULL Qwen2.5-Omni (or thinker-only) model, sharded, with its feature config."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

    text = {
        "vocab_size": 160,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    }
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 32,
        "fullatt_block_indexes": [0],
    }
    thinker = {"audio_config": tiny_audio_config(), "text_config": text, "vision_config": vision}
    torch.manual_seed(1234)
    if thinker_only:
        model = Qwen2_5OmniThinkerForConditionalGeneration(Qwen2_5OmniThinkerConfig(**thinker))
    else:
        model = Qwen2_5OmniForConditionalGeneration(
            Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
        )
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    WhisperFeatureExtractor(
        feature_size=128,
        chunk_length=300,
        n_fft=400,
        hop_length=160,
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
    ).save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_omni_checkpoint(tmp_path_factory):
    """(directory, model): a tiny random full Qwen2.5-Omni saved as several safetensors shards."""
    directory = tmp_path_factory.mktemp("tiny-omni")
    model = save_tiny_qwen2_5_omni(directory)
    return directory, model


@pytest.fixture(scope="session")
def tiny_io() -> ContinuousAudioIO:
    """The tiny Qwen2.5-Omni card with random weights, float32 on CPU."""
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def noise(rng: np.random.Generator, num_samples: int, scale: float = 0.1) -> np.ndarray:
    """Gaussian noise clip, float32."""
    return (rng.standard_normal(num_samples) * scale).astype(np.float32)


SPEECH_DIR = Path(__file__).resolve().parents[1] / "assets" / "speech"


def load_speech(name: str) -> tuple[np.ndarray, int]:
    """A committed espeak-ng clip as (int16 samples [N], sample rate)."""
    samples, sr = soundfile.read(SPEECH_DIR / name, dtype="int16")
    return samples, sr


@pytest.fixture(scope="session")
def speech_clips() -> dict[str, np.ndarray]:
    """The committed speech clips as mono float32 at 16 kHz (resampled with soxr where needed)."""
    clips = {}
    for path in sorted(SPEECH_DIR.glob("*.wav")):
        samples, sr = soundfile.read(path, dtype="float32")
        clips[path.stem] = soxr.resample(samples, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else samples
    return clips


def hf_audio_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The audio tower inside a full/thinker HF model, whatever the module nesting of this transformers version."""
    for path in ("thinker.model.audio_tower", "thinker.audio_tower", "model.audio_tower", "audio_tower"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise AttributeError(f"{type(model).__name__} has no audio tower")
