"""Raw-audio validation, int->float scaling, downmix and resampling.

Everything that can be wrong with a waveform is caught here, before any STFT,
with a message that says what was wrong and how to fix it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr
import torch

from contaudio.dtypes import dtype_name

log = logging.getLogger(__name__)

# Full-scale values used to map integer PCM to [-1, 1].
INT_FULL_SCALE: dict[np.dtype, float] = {
    np.dtype(np.int16): float(2**15),  # 32768
    np.dtype(np.int32): float(2**31),  # 2147483648
}
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))  # float16: exact in float32
SUPPORTED_DTYPES = FLOAT_DTYPES + tuple(INT_FULL_SCALE)
# torch dtypes taken as input: the numpy ones, plus bfloat16 (numpy has none; upcast to float32).
SUPPORTED_TORCH_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int16, torch.int32)
# Highest sample rate we accept: 768 kHz is the top rate of professional converters.
MAX_SAMPLE_RATE = 768_000
# Lowest: below 1 kHz is a unit mistake (kHz passed as Hz: 16 for 16000), and upsampling such a
# clip to 16 kHz would multiply its memory by > 16 (a 1 s clip "at 16 Hz" becomes 1000 s).
MIN_SAMPLE_RATE = 1_000

ResamplePolicy = Literal["resample", "raise"]
ChannelPolicy = Literal["average", "raise"]

_logged_once: set[str] = set()


def log_once(key: str, message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time ``key`` is seen in this process: by default a WARNING, which Python's logging
    shows unconfigured (a clip resampled, downmixed or transposed is never changed out of sight)."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, message)


@dataclass(frozen=True)
class AudioPolicy:
    """What ``prepare_waveform`` does with input that is not already model-ready.

    resample: "resample" (soxr, logged once) or "raise" when the rate differs.
    multichannel: "average" (downmix to mono, logged once) or "raise" when C > 1.
    max_duration_s: raise for clips longer than this (None: no limit).
    normalize: zero-mean/unit-variance the waveform (Qwen's processor does not).
    """

    resample: ResamplePolicy = "resample"
    multichannel: ChannelPolicy = "average"
    max_duration_s: float | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.resample not in ("resample", "raise"):
            raise ValueError(f"resample policy must be 'resample' or 'raise', got {self.resample!r}")
        if self.multichannel not in ("average", "raise"):
            raise ValueError(f"multichannel policy must be 'average' or 'raise', got {self.multichannel!r}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0 or None, got {self.max_duration_s!r}")


def check_sample_rate(sr: Any) -> int:
    """Return ``sr`` as a Python int, or raise if it is not a positive integer rate."""
    if isinstance(sr, (bool, np.bool_)) or not isinstance(sr, (int, np.integer)):
        raise TypeError(
            f"sample rate must be a positive integer (Hz), got {sr!r} ({type(sr).__name__}); "
            "pass e.g. int(sr) if your loader returns a float"
        )
    sr = int(sr)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        hint = " (a rate in kHz? pass it in Hz)" if 0 < sr < MIN_SAMPLE_RATE else ""
        raise ValueError(f"sample rate must be in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {sr}{hint}")
    return sr


def is_samples_by_channels(shape: tuple[int, ...]) -> bool:
    """Whether a 2-D ``shape`` is ``[N, C]`` (samples, channels): more rows than columns.

    ``[C, N]`` is canonical; ``[N, C]`` with ``N > C`` (soundfile's ``always_2d`` layout) is
    transposed, as ESPnet's ``ContinuousAudioIO`` does.

    >>> is_samples_by_channels((16000, 2)), is_samples_by_channels((2, 16000)), is_samples_by_channels((1, 1))
    (True, False, False)
    """
    return len(shape) == 2 and shape[0] > shape[1]


def waveform_shape(wav: Any) -> tuple[int, int]:
    """Validate type, dtype and rank without reading a sample; return ``(C, N)``.

    Shared by ``prepare_waveform`` and ``find_length``, so both read the same clips the
    same way with the same message (``find_length`` never touches the data). A ``[N, C]``
    array with ``N > C`` is read as ``C`` channels of ``N`` samples (logged once).
    """
    if isinstance(wav, torch.Tensor):
        if wav.dtype not in SUPPORTED_TORCH_DTYPES:
            names = ", ".join(dtype_name(d) for d in SUPPORTED_TORCH_DTYPES)
            kind = "complex " if wav.is_complex() else ""
            raise TypeError(f"wav {kind}tensor dtype {wav.dtype} is not supported; use one of: {names}")
        if wav.is_meta:
            raise ValueError("wav is on the meta device (a shape without data); pass a tensor that holds samples")
    elif isinstance(wav, np.ndarray):
        if wav.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
            names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
            raise TypeError(f"wav dtype {wav.dtype} is not supported; use one of: {names}")
    else:
        raise TypeError(f"wav must be a numpy array or torch tensor of shape [C, N] or [N], got {type(wav).__name__}")
    shape = tuple(wav.shape)
    if len(shape) == 1:
        shape = (1, *shape)
    elif len(shape) != 2:
        raise ValueError(
            f"wav must have shape [C, N] (channels, samples) or [N], got {len(shape)}-D shape {tuple(wav.shape)}"
        )
    if 0 in shape:
        raise ValueError(f"wav is empty (shape {tuple(wav.shape)}); drop empty clips before preprocessing")
    if is_samples_by_channels(shape):
        log_once(f"transpose-{shape[1]}", f"wav of shape {shape} read as [N, C] (samples, channels): transposed")
        shape = shape[::-1]
    channels, num_samples = shape
    return channels, num_samples


def as_numpy(wav: Any) -> np.ndarray:
    """A numpy array or torch tensor (any device) -> numpy array in native byte order."""
    if isinstance(wav, torch.Tensor):
        if wav.dtype == torch.bfloat16:
            wav = wav.float()
        return wav.detach().cpu().numpy()
    if isinstance(wav, np.ndarray):
        return wav if wav.dtype.isnative else wav.astype(wav.dtype.newbyteorder("="))
    raise TypeError(f"wav must be a numpy array or torch tensor of shape [C, N] or [N], got {type(wav).__name__}")


def check_waveform(wav: np.ndarray) -> np.ndarray:
    """Validate dtype and rank; return a ``[C, N]`` view of ``wav`` (``[N]`` and ``[N, C]`` re-laid)."""
    waveform_shape(wav)
    if wav.ndim == 1:
        return wav[None, :]
    return wav.T if is_samples_by_channels(wav.shape) else wav


def check_policy(channels: int, num_samples: int, sr: int, target_sr: int, policy: AudioPolicy) -> None:
    """Raise where ``policy`` refuses a clip of this layout (no data is read)."""
    if channels > 1 and policy.multichannel == "raise":
        raise ValueError(f"wav has {channels} channels; pass mono audio or set multichannel='average'")
    if sr != target_sr and policy.resample == "raise":
        raise ValueError(
            f"audio is {sr} Hz but the encoder expects {target_sr} Hz; resample it or set resample='resample'"
        )
    if policy.max_duration_s is not None and num_samples / sr > policy.max_duration_s:
        raise ValueError(
            f"clip is {num_samples / sr:.1f} s, longer than max_duration_s={policy.max_duration_s}; "
            "split it or raise the limit"
        )


def check_layout(wav: Any, sr: Any, target_sr: int, policy: AudioPolicy) -> tuple[int, int, int]:
    """Everything ``prepare_waveform`` checks before reading samples; return ``(sr, C, N)``."""
    sr = check_sample_rate(sr)
    channels, num_samples = waveform_shape(wav)
    check_policy(channels, num_samples, sr, target_sr, policy)
    return sr, channels, num_samples


def check_not_empty_after_resampling(resampled: int, num_samples: int, sr: int, target_sr: int) -> None:
    """Raise when resampling leaves no sample (e.g. 1 sample at 44.1 kHz -> 16 kHz)."""
    if resampled == 0:
        raise ValueError(
            f"clip of {num_samples} samples at {sr} Hz is empty after resampling to {target_sr} Hz; drop it"
        )


def to_float_mono(wav: np.ndarray, policy: AudioPolicy) -> np.ndarray:
    """``[C, N]`` int/float -> ``[N]`` float32 in [-1, 1] (ints scaled), downmixed per policy."""
    if wav.dtype in INT_FULL_SCALE:
        wav = wav.astype(np.float32) / INT_FULL_SCALE[wav.dtype]
    channels = wav.shape[0]
    if channels > 1:
        if policy.multichannel == "raise":
            raise ValueError(f"wav has {channels} channels; pass mono audio or set multichannel='average'")
        log_once(f"downmix-{channels}", f"averaging {channels} channels to mono")
        wav = wav.mean(axis=0, dtype=np.float64)
    else:
        wav = wav[0]
    # contiguous, writable float32 (copies only negative-stride, read-only or non-float32 input)
    return check_finite(np.require(wav, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE"]))


def check_finite(wav: np.ndarray, where: str = "") -> np.ndarray:
    """``wav`` unchanged, or a ValueError naming how many NaN/Inf samples it holds and the first one."""
    if not np.isfinite(wav).all():
        bad = np.flatnonzero(~np.isfinite(wav))
        raise ValueError(
            f"wav holds {bad.size} NaN/Inf samples{where} (first at index {int(bad[0])}); "
            "clean or drop the clip before preprocessing"
        )
    return wav


def resample(wav: np.ndarray, sr: int, target_sr: int, policy: AudioPolicy) -> np.ndarray:
    """Resample a mono float32 clip to ``target_sr`` with soxr (or raise, per policy)."""
    if sr == target_sr:
        return wav
    if policy.resample == "raise":
        raise ValueError(
            f"audio is {sr} Hz but the encoder expects {target_sr} Hz; resample it or set resample='resample'"
        )
    log_once(f"resample-{sr}-{target_sr}", f"resampling {sr} Hz -> {target_sr} Hz with soxr")
    return soxr.resample(wav, sr, target_sr).astype(np.float32, copy=False)


def normalize(wav: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance, as ``WhisperFeatureExtractor(do_normalize=True)`` does."""
    variance_floor = 1e-7  # the extractor's epsilon
    return ((wav - wav.mean()) / np.sqrt(wav.var() + variance_floor)).astype(np.float32)


def prepare_waveform(wav: Any, sr: Any, target_sr: int, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
    """Turn raw input ``(wav[C, N] or [N], sr)`` into mono float32 at ``target_sr``.

    Raises TypeError/ValueError (with the fix) for unsupported dtypes, bad ranks,
    empty clips, NaN/Inf, bad sample rates and over-long clips.
    Every check that needs no sample runs before any copy (``check_layout``).
    """
    sr, _, num_samples = check_layout(wav, sr, target_sr, policy)
    mono = resample(to_float_mono(check_waveform(as_numpy(wav)), policy), sr, target_sr, policy)
    check_not_empty_after_resampling(mono.size, num_samples, sr, target_sr)
    return normalize(mono) if policy.normalize else mono


def espnet_mono(wav: Any, sr: Any, target_sr: int, policy: AudioPolicy = AudioPolicy()) -> np.ndarray:
    """The waveform ESPnet 202611's ``ContinuousAudioIO.preprocess`` hands its extractor: ``[N']`` float32.

    ``[C, N]`` (or ``[N, C]`` with N > C, transposed; ``[N]`` is one channel) -> channel 0 only (logged
    once when C > 1), resampled to ``target_sr`` with ``torchaudio.functional.resample`` in the clip's
    own float dtype, then float32. Integer PCM is cast to float without scaling, as ESPnet's
    extractor casts it (its normalisation removes the scale). Same checks and messages as
    :func:`prepare_waveform` (rate, rank, dtype, empty, NaN/Inf, ``policy.max_duration_s``).
    """
    sr, channels, num_samples = check_layout(wav, sr, target_sr, policy)
    if channels > 1:
        log_once(f"espnet-channel0-{channels}", f"{channels} channels: keeping channel 0, as ESPnet's frontend does")
    first = check_waveform(as_numpy(wav))[0]
    if first.dtype.kind != "f":
        first = first.astype(np.float32)
    check_finite(first, " in channel 0")
    if sr != target_sr:
        log_once(
            f"espnet-resample-{sr}-{target_sr}", f"resampling {sr} Hz -> {target_sr} Hz with torchaudio (ESPnet's)"
        )
        first = torchaudio_resample(np.ascontiguousarray(first), sr, target_sr)
    check_not_empty_after_resampling(first.size, num_samples, sr, target_sr)
    return np.require(first, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def espnet_samples(num_samples: int, sr: int, target_sr: int) -> int:
    """The sample count ESPnet's ``find_length`` assumes after resampling: ``int(N * target_sr / sr)`` (float maths).

    ``preprocess`` really gets torchaudio's ``ceil(N * target_sr / sr)``; the two differ for some N at
    rates that do not divide evenly, and so can ESPnet's ``find_length`` and ``preprocess``. contaudio's
    ``frontend="espnet"`` reproduces both as they are.

    >>> espnet_samples(48000, 48000, 16000), espnet_samples(22051, 22050, 16000)
    (16000, 16000)
    """
    return int(num_samples * target_sr / sr)


def torchaudio_resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``torchaudio.functional.resample`` (ESPnet's resampler) on a mono float clip; a clear error without it."""
    try:
        import torchaudio.functional
    except ImportError as err:  # ESPnet installs torchaudio; contaudio does not need it otherwise
        raise ImportError(
            f"frontend='espnet' resamples with torchaudio, as ESPnet does, but torchaudio does not import ({err}): "
            f"pip install torchaudio (the build for your torch), or pass {target_sr} Hz audio"
        ) from err
    return torchaudio.functional.resample(torch.from_numpy(wav), sr, target_sr).numpy()
