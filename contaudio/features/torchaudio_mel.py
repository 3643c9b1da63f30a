"""A stand-in for the one torchaudio class HF's ``GraniteSpeechFeatureExtractor`` uses, so HF's extractor runs here.

HF's Granite Speech extractor builds ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, win_length,
hop_length, n_mels)`` (every other argument at torchaudio's default) and refuses to start without torchaudio.
PyPI has no torchaudio for the torch contaudio pins (torch 2.13; torchaudio stops at 2.11, whose compiled
extension is built for torch 2.11). HF's extractor is the *reference* our fast featurizer is judged against,
so where torchaudio is missing :func:`install_for_hf_granite_speech` gives HF's extractor module this
transcription of torchaudio's ``MelSpectrogram`` (``torchaudio.functional.spectrogram`` and
``melscale_fbanks``, torchaudio 2.x, line for line in torch) and lets its ``torchaudio`` backend check
pass. Everything else the reference does (log10 floor, 80 dB clamp, rescale, odd-frame drop, frame
pairing, the projector row count) is HF's own code. Where torchaudio is installed nothing is touched.

The transcription is checked against an independent implementation of the same math,
``transformers.audio_utils`` (numpy, float64: periodic Hann window, reflect-padded centred frames,
power 2, HTK mel without normalisation), in ``tests/features/test_granite_speech.py``.
"""

from __future__ import annotations

import importlib.util
import math
from types import ModuleType, SimpleNamespace

import torch
from torch import nn
from transformers.utils import import_utils

HTK_MEL_FACTOR = 2595.0  # mel = 2595 * log10(1 + hz / 700)
HTK_MEL_BREAK_HZ = 700.0
TORCHAUDIO = "torchaudio"


def hz_to_mel(hz: float) -> float:
    """torchaudio's ``_hz_to_mel(freq, "htk")`` (a Python float, as there).

    >>> round(hz_to_mel(700.0), 3)
    781.173
    """
    return HTK_MEL_FACTOR * math.log10(1.0 + hz / HTK_MEL_BREAK_HZ)


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``_mel_to_hz(mels, "htk")``."""
    return HTK_MEL_BREAK_HZ * (10.0 ** (mels / HTK_MEL_FACTOR) - 1.0)


def melscale_fbanks(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """torchaudio's ``melscale_fbanks(..., norm=None, mel_scale="htk")``: ``[n_freqs, n_mels]`` float32 triangles."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    f_pts = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))


class MelSpectrogram(nn.Module):
    """``torchaudio.transforms.MelSpectrogram`` for the arguments HF's Granite Speech extractor passes
    (``f_min=0``, ``f_max=sample_rate // 2``, periodic Hann window, power 2, ``center=True`` with reflect
    padding, no normalisation, HTK mel scale): ``[..., N]`` -> ``[..., n_mels, N // hop_length + 1]``."""

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length))
        self.register_buffer("fb", melscale_fbanks(n_fft // 2 + 1, 0.0, float(sample_rate // 2), n_mels, sample_rate))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.size()
        spec = torch.stft(
            waveform.reshape(-1, shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.reshape(shape[:-1] + spec.shape[-2:]).abs().pow(2.0)  # [..., n_freqs, frames]
        return torch.matmul(power.transpose(-1, -2), self.fb).transpose(-1, -2)


STAND_IN = SimpleNamespace(transforms=SimpleNamespace(MelSpectrogram=MelSpectrogram))


def torchaudio_installed() -> bool:
    return importlib.util.find_spec(TORCHAUDIO) is not None


def install_for_hf_granite_speech(module: ModuleType) -> bool:
    """Let HF's Granite Speech extractor ``module`` run without torchaudio (no-op where torchaudio is installed).

    Sets the module's ``torchaudio`` to :data:`STAND_IN` and its ``requires_backends`` to one that
    checks every backend but torchaudio; nothing outside that module changes. Returns whether it did.
    """
    if torchaudio_installed() or getattr(module, TORCHAUDIO, None) is STAND_IN:
        return False

    def requires_backends(obj: object, backends: list | tuple | str) -> None:
        backends = [backends] if isinstance(backends, str) else list(backends)
        import_utils.requires_backends(obj, [backend for backend in backends if backend != TORCHAUDIO])

    module.torchaudio = STAND_IN
    module.requires_backends = requires_backends
    return True
