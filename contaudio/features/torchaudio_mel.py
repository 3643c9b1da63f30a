"""A stand-in for the one torchaudio class HF's ``GraniteSpeechFeatureExtractor`` uses, installed only while
HF's extractor runs and only where torchaudio is missing.

HF's Granite Speech extractor builds ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, win_length,
hop_length, n_mels)`` (every other argument at torchaudio's default) and checks its ``torchaudio`` backend in
``__init__``, ``__call__`` and ``_extract_mel_spectrograms``. PyPI has no torchaudio for the torch contaudio
pins (torch 2.13; torchaudio stops at 2.11, whose compiled extension is built for torch 2.11). HF's
extractor is the *reference* contaudio's Granite featurizer is judged against, so:

- where torchaudio is installed (ESPnet's environment, for one), HF's extractor runs on torchaudio itself
  and nothing here is used: :func:`torchaudio_for_hf_granite_speech` does nothing;
- where it is missing, :func:`torchaudio_for_hf_granite_speech` is a context manager that, for as long as
  it is open, gives HF's extractor module :data:`STAND_IN` as its ``torchaudio`` and a ``requires_backends``
  that checks every backend but torchaudio, then puts the module back as it was (also on error). It
  logs once per process that the stand-in is in use. Only the code that runs HF's Granite extractor
  opens it (``GraniteSpeechFeatures.hf_extractor`` and the family's ``hf_inputs``); importing contaudio
  changes no module of transformers.

:class:`MelSpectrogram` transcribes torchaudio 2.x's ``MelSpectrogram`` for those arguments
(``torchaudio.functional.spectrogram`` and ``melscale_fbanks``). Everything else the reference does (log10
floor, 80 dB clamp, rescale, odd-frame drop, frame pairing, the projector row count) is HF's own code. The
transcription shares no code with contaudio's featurizer (:mod:`contaudio.features.granite_speech`), and
``tests/features/test_granite_torchaudio_stand_in.py`` checks it against a numpy spectrogram written from
the definition and, where torchaudio imports, against ``torchaudio.transforms.MelSpectrogram`` itself.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace

import torch
from torch import nn
from transformers.models.granite_speech import feature_extraction_granite_speech as hf_granite_features
from transformers.utils import import_utils, is_torchaudio_available

log = logging.getLogger(__name__)

HTK_MEL_FACTOR = 2595.0  # mel = 2595 * log10(1 + hz / 700)
HTK_MEL_BREAK_HZ = 700.0
# torchaudio's defaults for what HF's extractor does not pass (MelSpectrogram / Spectrogram, torchaudio 2.x)
POWER = 2.0  # power=2.0: |X|^2
CENTER = True  # center=True: frames centred on t * hop_length ...
PAD_MODE = "reflect"  # ... the signal reflect-padded by n_fft // 2 at both ends
PERIODIC_WINDOW = True  # window_fn=torch.hann_window, periodic by default
F_MIN = 0.0  # f_min=0.0; f_max=None means sample_rate // 2
TORCHAUDIO = "torchaudio"
REQUIRES_BACKENDS = "requires_backends"
PATCHED = (TORCHAUDIO, REQUIRES_BACKENDS)  # the only names of HF's module the stand-in sets
STAND_IN_NOTICE = (
    "torchaudio is not installed: HF's GraniteSpeechFeatureExtractor runs on contaudio's stand-in for "
    "torchaudio.transforms.MelSpectrogram (contaudio.features.torchaudio_mel, checked against torchaudio "
    "and a numpy spectrogram) while contaudio calls it; install torchaudio (the build for your torch) to run "
    "HF's extractor on torchaudio itself"
)


def hz_to_mel(hz: float) -> float:
    """torchaudio's ``_hz_to_mel(freq, "htk")`` (a Python float, as there).

    >>> round(hz_to_mel(700.0), 3)
    781.173
    """
    return HTK_MEL_FACTOR * math.log10(1.0 + hz / HTK_MEL_BREAK_HZ)


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """torchaudio's ``_mel_to_hz(mels, "htk")``.

    >>> mel_to_hz(torch.tensor([0.0, hz_to_mel(700.0)])).tolist()
    [0.0, 700.0]
    """
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
    padding, no normalisation, HTK mel scale): ``[..., N]`` -> ``[..., n_mels, N // hop_length + 1]``.

    The torchaudio defaults are read from this module's constants when the transform is built.
    """

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.power, self.center, self.pad_mode = POWER, CENTER, PAD_MODE
        self.register_buffer("window", torch.hann_window(win_length, periodic=PERIODIC_WINDOW))
        f_max = float(sample_rate // 2)
        self.register_buffer("fb", melscale_fbanks(n_fft // 2 + 1, F_MIN, f_max, n_mels, sample_rate))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.size()
        spec = torch.stft(
            waveform.reshape(-1, shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.center,
            pad_mode=self.pad_mode,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.reshape(shape[:-1] + spec.shape[-2:]).abs().pow(self.power)  # [..., n_freqs, frames]
        return torch.matmul(power.transpose(-1, -2), self.fb).transpose(-1, -2)


STAND_IN = SimpleNamespace(transforms=SimpleNamespace(MelSpectrogram=MelSpectrogram))


def requires_backends_but_torchaudio(obj: object, backends: list | tuple | str) -> None:
    """transformers' ``requires_backends`` for every backend in ``backends`` but torchaudio."""
    backends = [backends] if isinstance(backends, str) else list(backends)
    import_utils.requires_backends(obj, [backend for backend in backends if backend != TORCHAUDIO])


def stand_in_needed() -> bool:
    """Whether HF's Granite extractor lacks torchaudio: HF's own test (``is_torchaudio_available``), the one
    that decides whether its module imports torchaudio at all."""
    return not is_torchaudio_available()


class _Installation:
    """The one place that changes HF's module: a count of open contexts (threads may nest and overlap) and
    the module's own attributes, put back when the last one closes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: dict[str, object] = {}
        self.notified = False

    def enter(self, module: ModuleType) -> None:
        with self.lock:
            if self.depth == 0:
                self.saved = {name: vars(module)[name] for name in PATCHED if name in vars(module)}
                module.torchaudio = STAND_IN
                module.requires_backends = requires_backends_but_torchaudio
                if not self.notified:
                    self.notified = True
                    log.warning(STAND_IN_NOTICE)
            self.depth += 1

    def exit(self, module: ModuleType) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for name in PATCHED:
                    if name in self.saved:
                        setattr(module, name, self.saved[name])
                    else:
                        delattr(module, name)
                self.saved = {}


_INSTALLATION = _Installation()


@contextmanager
def torchaudio_for_hf_granite_speech() -> Iterator[bool]:
    """Build and call HF's ``GraniteSpeechFeatureExtractor`` inside this; yields whether the stand-in is in use.

    Where torchaudio is installed it yields ``False`` and touches nothing: HF's extractor runs on
    torchaudio. Otherwise HF's extractor module gets :data:`STAND_IN` as ``torchaudio`` and a
    ``requires_backends`` that skips torchaudio until the outermost open context closes (normally or
    by an exception), then its own attributes back; the first use in a process logs
    :data:`STAND_IN_NOTICE` (WARNING). Nested and concurrent uses share one installation.
    """
    if not stand_in_needed():
        yield False
        return
    _INSTALLATION.enter(hf_granite_features)
    try:
        yield True
    finally:
        _INSTALLATION.exit(hf_granite_features)
