"""Granite Speech's featurizer against HF's own ``GraniteSpeechFeatureExtractor``.

torchaudio has no release for the pinned torch, so HF's extractor runs with contaudio's transcription of
``torchaudio.transforms.MelSpectrogram`` (:mod:`contaudio.features.torchaudio_mel`); that transcription is
checked here against ``transformers.audio_utils`` (numpy, float64), an independent implementation of the
same spectrogram. Everything else in the reference is HF's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.audio import noise
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from contaudio.features import featurizer_from_dict
from contaudio.features.granite_speech import GraniteSpeechFeatures
from contaudio.features.torchaudio_mel import MelSpectrogram

pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = GraniteSpeechFeatures()
TOLERANCE = 1e-4  # the issue's bound; measured <= 2.4e-7 (one float32 ulp at the values' scale)
STFT_HOP = FEATURES.stft_hop
# the shortest clip (n_fft // 2 + 1), edges of the 160-sample STFT hop and the 320-sample model frame, 1 s, odd sizes
EDGE_SIZES = [257, 258, 319, 320, 321, 479, 480, 481, 639, 640, 641, 16000, 16001, 16159, 16160, 16161, 112123]


def hf_features(extractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
    """HF's extractor on one audio as ``GraniteSpeechProcessor`` calls it: ``([F, 160], audio_embed_sizes[0])``."""
    out = extractor([torch.from_numpy(wav)], device="cpu")
    return out["input_features"][0], int(out["audio_embed_sizes"][0])


def decaying(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise fading by > 100 dB: many frames sit at the 80 dB clamp, so a wrong clamp shows."""
    return noise(rng, num_samples) * np.exp(-np.linspace(0, 30, num_samples)).astype(np.float32)


def test_equals_hfs_extractor_on_noise_speech_and_edge_lengths(rng, speech_clips) -> None:
    extractor = FEATURES.hf_extractor()
    clips = {f"noise {n}": noise(rng, n) for n in EDGE_SIZES}
    clips |= {f"decaying {n}": decaying(rng, n) for n in (4000, 48000)}
    # rising to a loud end, odd STFT frame counts: the clamp's maximum is in the frame HF drops after taking it
    clips |= {f"rising {n}": decaying(rng, n)[::-1].copy() for n in (16000, 16161)}
    clips |= {f"{name} ({len(wav)})": wav for name, wav in speech_clips.items()}
    clips |= {f"{name} cut to {n}": wav[:n] for name, wav in speech_clips.items() for n in (12345, 32001)}
    for name, wav in clips.items():
        reference, _ = hf_features(extractor, wav)
        ours = FEATURES.compute(torch.from_numpy(wav))
        assert ours.shape == reference.shape == (FEATURES.frames(len(wav)), FEATURES.n_mels), name
        assert float((ours - reference).abs().max()) <= TOLERANCE, name


def test_frames_and_rows_equal_hfs_for_every_length() -> None:
    """``frames(N)`` is the extractor's frame count, and the family's rule on it the processor's token count
    (``audio_embed_sizes``), for every N from the shortest clip to 0.15 s, and int or tensor alike."""
    from contaudio.encoders.granite_speech import granite_speech_rows

    extractor = FEATURES.hf_extractor()
    sizes = list(range(FEATURES.min_samples, 2400))
    for n in sizes:
        features, tokens = hf_features(extractor, np.zeros(n, np.float32))
        frames = FEATURES.frames(n)
        assert (features.shape[0], tokens) == (frames, granite_speech_rows(frames)), n
    counted = extractor._get_num_audio_features(list(range(10 * 16000)))  # HF's count from the samples alone
    assert granite_speech_rows(FEATURES.frames(torch.arange(10 * 16000))).tolist() == counted
    assert FEATURES.frames(torch.tensor(sizes)).tolist() == [FEATURES.frames(n) for n in sizes]


def test_too_short_a_clip_is_refused_as_hf_refuses_it() -> None:
    short = np.zeros(FEATURES.min_samples - 1, np.float32)
    with pytest.raises(RuntimeError):
        FEATURES.hf_extractor()([torch.from_numpy(short)])
    with pytest.raises(ValueError, match="at least 257 samples"):
        FEATURES.compute(torch.from_numpy(short))


def test_round_trips_hfs_saved_config_and_refuses_what_it_cannot_reproduce(tmp_path) -> None:
    FEATURES.hf_extractor().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert featurizer_from_dict(saved) == FEATURES  # melspec_kwargs, feature_size, padding_side: as HF reads them
    assert GraniteSpeechFeatures.from_dict(FEATURES.to_dict()) == FEATURES
    assert GraniteSpeechFeatures.from_dict({**FEATURES.to_dict(), "n_mels": 64}).n_mels == 128
    with pytest.raises(ValueError, match="feature_extractor_type='WhisperFeatureExtractor'"):
        GraniteSpeechFeatures.from_dict({**FEATURES.to_dict(), "feature_extractor_type": "WhisperFeatureExtractor"})
    with pytest.raises(ValueError, match=r"win_length=600 must lie in 1\.\.n_fft=512"):
        GraniteSpeechFeatures.from_dict({**FEATURES.to_dict(), "win_length": 600})
    with pytest.raises(ValueError, match="hop_length=0"):
        GraniteSpeechFeatures.from_dict({**FEATURES.to_dict(), "hop_length": 0})


def test_known_bug_changes_features_hf_would_give(rng) -> None:
    buggy = FEATURES.with_known_bug()
    assert buggy.to_dict() == FEATURES.to_dict() and buggy.frames(16000) == FEATURES.frames(16000)
    wav = torch.from_numpy(decaying(rng, 16000))
    assert float((buggy.compute(wav) - FEATURES.compute(wav)).abs().max()) > 0.1


def test_torchaudio_stand_in_equals_an_independent_spectrogram(rng) -> None:
    """The MelSpectrogram transcription vs transformers' numpy spectrogram (periodic Hann of 400 in 512-point
    frames, centred with reflect padding, power 2, HTK mel without normalisation), in float64."""
    wav = noise(rng, 12345)
    ours = MelSpectrogram(16000, 512, 400, STFT_HOP, 80)(torch.from_numpy(wav)).double().numpy()
    filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm=None, mel_scale="htk")  # fmt: skip
    window = np.pad(window_function(400, "hann"), (56, 56))  # torch.stft centres a short window in n_fft
    reference = spectrogram(wav.astype(np.float64), window, frame_length=512, hop_length=STFT_HOP, fft_length=512,
                            power=2.0, center=True, pad_mode="reflect", mel_filters=filters)  # fmt: skip
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
