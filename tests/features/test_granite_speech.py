"""Granite Speech's featurizer against HF's own ``GraniteSpeechFeatureExtractor``.

HF's extractor runs on torchaudio where it is installed (ESPnet's environment), else on contaudio's stand-in
for ``torchaudio.transforms.MelSpectrogram``, installed only while HF's extractor runs
(``torchaudio_for_hf_granite_speech``) and checked on its own in ``test_granite_torchaudio_stand_in.py``.
The featurizer shares no code with that stand-in: a fault in the stand-in shows here as a difference.
Everything else in the reference is HF's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.audio import noise

from contaudio.features import featurizer_from_dict, torchaudio_mel
from contaudio.features import granite_speech as featurizer_module
from contaudio.features.granite_speech import GraniteSpeechFeatures
from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech

pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = GraniteSpeechFeatures()
TOLERANCE = 1e-4  # the bound; measured <= 4.8e-6 (HF on torchaudio or the stand-in alike)
# the shortest clip (n_fft // 2 + 1), edges of the 160-sample STFT hop and the 320-sample model frame, 1 s, odd sizes
EDGE_SIZES = [257, 258, 319, 320, 321, 479, 480, 481, 639, 640, 641, 16000, 16001, 16159, 16160, 16161, 112123]


def hf_features(extractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
    """HF's extractor on one audio as ``GraniteSpeechProcessor`` calls it: ``([F, 160], audio_embed_sizes[0])``."""
    with torchaudio_for_hf_granite_speech():
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
        hf_features(FEATURES.hf_extractor(), short)
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


@pytest.mark.skipif(not torchaudio_mel.stand_in_needed(), reason="HF's extractor runs on torchaudio here")
def test_a_fault_in_the_stand_in_shows_against_the_featurizer(rng, monkeypatch) -> None:
    """The featurizer does not share the stand-in's code: HF's extractor on a faulty stand-in (a symmetric Hann
    window, or a mel scale from 20 Hz) differs from it."""
    wav = noise(rng, 16000)
    ours = FEATURES.compute(torch.from_numpy(wav))
    for constant, value in (("PERIODIC_WINDOW", False), ("F_MIN", 20.0)):
        with monkeypatch.context() as patch:
            patch.setattr(torchaudio_mel, constant, value)
            reference, _ = hf_features(FEATURES.hf_extractor(), wav)
        assert float((ours - reference).abs().max()) > TOLERANCE, constant


def names_from_the_stand_in(module) -> set[str]:
    """The names ``module`` binds to the stand-in's module or to anything defined there."""
    return {
        name
        for name, value in vars(module).items()
        if value is torchaudio_mel or getattr(value, "__module__", None) == torchaudio_mel.__name__
    }


def test_the_featurizer_takes_nothing_from_the_stand_in_but_its_context(monkeypatch) -> None:
    """Our values never go through the stand-in's code (the mel matrix once did): only the context that lets
    HF's extractor run is imported. Importing the stand-in's filter bank again is caught."""
    assert names_from_the_stand_in(featurizer_module) == {"torchaudio_for_hf_granite_speech"}
    monkeypatch.setattr(featurizer_module, "melscale_fbanks", torchaudio_mel.melscale_fbanks, raising=False)
    assert names_from_the_stand_in(featurizer_module) == {"torchaudio_for_hf_granite_speech", "melscale_fbanks"}
