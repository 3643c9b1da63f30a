"""``contaudio.integrations.espnet`` in contaudio's own environment (no ESPnet installed).

Against the real ESPnet package and ESPnet's own class: ``tests/integration/`` (``make test-espnet``).
Here: the parts that need no ESPnet — the ``espnet`` frontend against HF's extractor called the way
ESPnet's class calls it, ESPnet's parameter names, the constructor ESPnet's YAML drives.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from helpers.audio import noise, speech_clips_16k
from helpers.checkpoints import TINY_GEMMA3N, TINY_QWEN_OMNI

from contaudio import ContinuousAudioIO as ContaudioIO
from contaudio import audio
from contaudio.integrations import espnet
from contaudio.integrations.espnet import ContinuousAudioIO

FEATURE_ATOL = 1e-5


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32")


def espnet_extractor_call(io: ContinuousAudioIO, wav: np.ndarray) -> np.ndarray:
    """HF's WhisperFeatureExtractor called as ESPnet 202611's class calls it: ``[M, n_mels]`` with M = N // hop."""
    extractor = io.features.hf_extractor()
    out = extractor([wav], truncation=False, return_tensors="np", do_normalize=True, max_length=wav.shape[0],
                    return_attention_mask=True, sampling_rate=extractor.sampling_rate)  # fmt: skip
    return out["input_features"][0, :, : wav.shape[0] // extractor.hop_length].T


@pytest.mark.parametrize("source", ["speech", "noise", "quiet noise", "long"])
def test_espnet_frontend_equals_hf_extractor_called_as_espnet_calls_it(io, rng, source: str) -> None:
    wav = {
        "speech": speech_clips_16k()["quick_brown_fox_16k"],
        "noise": noise(rng, 16_411),
        "quiet noise": noise(rng, 8_000, 1e-4),
        "long": noise(rng, 16000 * 45 + 17),
    }[source]
    seq, (rows, mel), mask = io.preprocess((wav[None], 16000))
    reference = espnet_extractor_call(io, wav)
    assert mel.shape == reference.shape and float(np.abs(mel - reference).max()) <= FEATURE_ATOL
    assert rows == io.find_length(None, before_length=wav.shape[0] // 160) == io.find_length((wav[None], 16000))
    assert seq.dtype == mask.dtype == np.int32 and seq.shape == mask.shape == (rows, 1)


def test_the_check_sees_the_processor_frontend_differ(rng) -> None:
    processor = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True, frontend="processor")
    wav = noise(rng, 32_000)  # 200 frames either way; the values differ (no normalisation, zero-padded end)
    mel = processor.preprocess((wav[None], 16000))[1][1]
    assert float(np.abs(mel - espnet_extractor_call(processor, wav)).max()) > 100 * FEATURE_ATOL


def test_channel_zero_is_taken_and_scale_is_normalised_away(io, rng) -> None:
    first, second = noise(rng, 20_000), noise(rng, 20_000, 0.7)
    mel = io.preprocess((np.stack([first, second]), 16000))[1][1]
    np.testing.assert_allclose(mel, io.preprocess((first[None], 16000))[1][1], atol=0)
    as_int16 = np.round(first / np.abs(first).max() * 20_000).astype(np.int16)
    as_float = (as_int16 / 32768.0).astype(np.float32)
    np.testing.assert_allclose(
        io.preprocess((as_int16[None], 16000))[1][1], io.preprocess((as_float[None], 16000))[1][1], atol=1e-4
    )


def test_find_length_counts_as_espnet_does(io) -> None:
    """ESPnet: ``int(N * 16000 / sr) // 160`` frames, then the tower's rule (floor, not the processor's ceil)."""
    for n, sr in ((16_400, 16000), (48_000, 48000), (22_051, 22050), (159, 16000), (1, 44100)):
        frames = int(n * 16000 / sr) // 160
        assert io.find_length((np.zeros((1, n), np.float32), sr)) == io.find_length(None, before_length=frames)


def test_resampling_needs_torchaudio_and_says_so(io, rng, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # as in an environment without torchaudio
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(ImportError, match="pip install torchaudio"):
        io.preprocess((noise(rng, 44_100)[None], 44100))


def test_a_clip_too_short_to_reflect_is_refused_clearly(io) -> None:
    with pytest.raises(ValueError, match="more than 200 samples"):
        io.preprocess((np.full((1, 200), 0.1, np.float32), 16000))


def test_find_length_counts_such_a_clip_as_espnet_does_with_a_warning_once(io, caplog, monkeypatch) -> None:
    """ESPnet's find_length gives N // 160 (0 or 1 rows) for a clip its preprocess cannot extract; so does this
    front end (``tests/integration`` compares every N with ESPnet's), and it warns that preprocess refuses it."""
    monkeypatch.setattr(audio, "_logged_once", set())
    with caplog.at_level(logging.WARNING, logger="contaudio.audio"):
        assert io.find_length(201) == io.find_length(None, before_length=201 // 160)  # long enough: no warning
        assert not caplog.records
        counts = [io.find_length(n) for n in (150, 200)] + [io.find_length(torch.tensor([16000, 180])).tolist()]
    assert counts == [0, io.find_length(None, before_length=1), [io.find_length(16000), 0]]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "preprocess refuses it" in caplog.records[0].getMessage()


def test_frontends_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="frontend must be one of"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True, frontend="kaldi")
    with pytest.raises(ValueError, match="use frontend='processor'"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_GEMMA3N, skip_init_encoder=True)
    with pytest.raises(ValueError, match="'processor' frontend's options"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True, multichannel="raise")


# ------------------------------------------------------------------------------------ ESPnet's names
def test_parameters_carry_espnets_names_and_dropped_weights_keep_their_keys(io) -> None:
    keys = set(io.state_dict())
    assert all(key.startswith("model.audio_tower.") for key in keys)
    assert "model.audio_tower.audio_bos_eos_token.weight" in keys  # a buffer: in checkpoints, never trained
    assert "model.audio_tower.audio_bos_eos_token.weight" not in dict(io.named_parameters())


def test_checkpoints_interchange_with_contaudios_own_class(io) -> None:
    base = ContaudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32", seed=5)
    io_copy = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32", seed=6)
    io_copy.load_state_dict(base.state_dict(), strict=True)  # contaudio's layout, without the dropped weight
    base.load_state_dict(io.state_dict(), strict=True)  # ESPnet's layout, with it
    for name, value in base.encoder.state_dict().items():
        assert torch.equal(value, io.encoder.state_dict()[name]), name


def test_yaml_arguments_as_espnet_takes_them(rng, caplog) -> None:
    """ESPnet reads ``getattr(torch, dtype)`` and hands ``attn_implementation`` to transformers."""
    built = ContinuousAudioIO(
        encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float", attn_implementation="flex_attention"
    )
    assert built.torch_dtype == torch.float32 and built.attn_implementation == "sdpa"
    assert (
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True, dtype="half").torch_dtype
        == torch.float16
    )
    with pytest.raises(ValueError, match="unsupported dtype"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, skip_init_encoder=True, dtype="int8")
    assert espnet.contaudio_attention("kernels-community/flash-attn") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only node case: this machine has CUDA")
def test_a_cpu_only_stats_node_builds_no_encoder_for_a_cuda_yaml(rng) -> None:
    stats = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="bfloat16", device="cuda")
    assert stats.encoder is None and not list(stats.parameters())
    assert stats.preprocess((noise(rng, 16_000)[None], 16000))[1][0] == stats.find_length(16_000) == 25
    with pytest.raises(RuntimeError, match="no encoder"):
        stats.encode_batch(torch.zeros(1, 100, 128), torch.tensor([100]))
