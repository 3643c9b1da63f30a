"""Phi-4-multimodal's log-mel filterbank (``Phi4MultimodalFeatureExtractor``) on the clip's own length.

HF's extractor is a Kaldi-style fbank: frames of ``win_length`` (400) samples every ``hop_length``
(160), no centring and no padding, so a clip of ``N`` samples has ``(N - 400) // 160 + 1`` frames
(none below 400 samples, where HF's ``unfold`` raises). Each frame is pre-emphasised *within the
frame* (``y[i] = x[i] - 0.97 x[i - 1]``, its first sample standing in for its own predecessor),
scaled to the 16-bit range, multiplied by a symmetric Hamming window, zero-padded to ``n_fft``
(512) and transformed in float64; the power spectrum goes through an 80-band Kaldi mel matrix
(0-7690 Hz), is floored at 1 and takes the natural log. There is no clip-level clamp: a frame's
values depend on its own 400 samples only.

This featurizer runs the same operations in the same precision (float32 pre-emphasis, float64
window and FFT, float32 mel product; the power is summed in float64 where HF squares a complex64
magnitude, within an ulp) on one clip at a time, in blocks of frames so memory stays flat for any
length, without HF's batch padding and masking machinery (measured: within 1.9e-6 of HF). The FFT must stay in
float64: in float32 its rounding noise, relative to a frame's total power, moves the weak low mel
bands of a pre-emphasised clip by ~2e-4 in log units (measured on white noise), past the 1e-4
contaudio holds every featurizer to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar

import torch
from transformers import Phi4MultimodalFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from contaudio.features.base import EXTRACTOR_TYPE_KEY, Featurizer, register_featurizer
from contaudio.lengths import IntOrTensor

PCM_SCALE = 32768  # the extractor scales pre-emphasised samples in [-1, 1] to the int16 range, as Kaldi reads PCM
MEL_POWER_FLOOR = 1.0  # mel power is floored at 1 before the natural log: a silent frame is log(1) = 0
MEL_SCALE = "kaldi"  # the extractor's mel matrix: Kaldi's mel scale, triangles drawn in mel space
BLOCK_FRAMES = 4096  # frames per FFT block (~41 s): the float64 temporaries stay ~17 MB for any clip length
TOKEN_RATE = 8  # audio_compression_rate: mel frames per LM audio token (the tower's time_reduction)
TOKEN_DOWNSAMPLE = 1  # audio_downsample_rate: a second token pooling no released checkpoint uses
FEATURE_STRIDE = 1  # audio_feat_stride: multiplies the extractor's frame count without striding the features


def fbank_frames(num_samples: IntOrTensor, win_length: int, hop_length: int) -> IntOrTensor:
    """Frames of ``win_length`` samples every ``hop_length`` that fit in ``N`` samples: ``(N - win) // hop + 1``,
    0 when ``N < win_length`` (the extractor's ``feature_lengths``; it raises there instead).

    >>> [fbank_frames(n, 400, 160) for n in (0, 239, 399, 400, 559, 560, 16000)]
    [0, 0, 0, 1, 1, 2, 98]
    >>> fbank_frames(torch.tensor([100, 400, 16000]), 400, 160).tolist()
    [0, 1, 98]
    """
    count = (num_samples - win_length) // hop_length + 1
    return count.clamp(min=0) if isinstance(count, torch.Tensor) else max(count, 0)


@register_featurizer
@dataclass(frozen=True)
class Phi4MultimodalFeatures(Featurizer):
    """``Phi4MultimodalFeatureExtractor``: the settings of a ``preprocessor_config.json`` that define it.

    ``periodic_window`` is not a setting of HF's extractor (always a symmetric Hamming window); it
    exists for :meth:`with_known_bug` and is never read from or written to a config.
    """

    extractor_type: ClassVar[str] = "Phi4MultimodalFeatureExtractor"
    sampling_rate: int = 16000
    feature_size: int = 80  # n_mels
    hop_length: int = 160  # type: ignore[assignment]  (a field here, a property in the base)
    n_fft: int = 512
    win_length: int = 400
    preemphasis: float = 0.97
    padding_value: float = 0.0
    audio_compression_rate: int = TOKEN_RATE
    audio_downsample_rate: int = TOKEN_DOWNSAMPLE
    audio_feat_stride: int = FEATURE_STRIDE
    mel_min_frequency: float = 0.0
    mel_max_frequency: float = 7690.0
    periodic_window: bool = field(default=False, repr=False)

    @property
    def n_mels(self) -> int:
        return self.feature_size

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """``(N - 400) // 160 + 1`` (0 below 400 samples): the extractor's ``feature_lengths``."""
        return fbank_frames(num_samples, self.win_length, self.hop_length)

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        return phi4_log_mel(wav, self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Phi4MultimodalFeatures:
        """Build from a ``preprocessor_config.json`` dict (other keys ignored); refuse what HF's model cannot match."""
        kind = raw.get(EXTRACTOR_TYPE_KEY)
        if kind != cls.extractor_type:
            raise ValueError(f"{kind!r} is not {cls.extractor_type}; use contaudio.features.featurizer_from_dict")
        cfg = cls(**{k: raw[k] for k in cls.hf_keys() if k in raw})
        if cfg.audio_feat_stride != FEATURE_STRIDE:
            raise ValueError(
                f"audio_feat_stride={cfg.audio_feat_stride}: HF's extractor multiplies its frame count by it "
                f"without striding the features, so its mask and token count overrun the features; "
                f"set audio_feat_stride={FEATURE_STRIDE} (as microsoft/Phi-4-multimodal-instruct)"
            )
        if (cfg.audio_compression_rate, cfg.audio_downsample_rate) != (TOKEN_RATE, TOKEN_DOWNSAMPLE):
            raise ValueError(
                f"audio_compression_rate={cfg.audio_compression_rate}, audio_downsample_rate="
                f"{cfg.audio_downsample_rate}: the processor would reserve ceil(ceil(M / compression) / downsample) "
                f"audio tokens, but the tower returns ceil(M / {TOKEN_RATE}) rows (time_reduction {TOKEN_RATE}); set "
                f"audio_compression_rate={TOKEN_RATE} and audio_downsample_rate={TOKEN_DOWNSAMPLE}"
            )
        if cfg.n_fft < cfg.win_length:
            raise ValueError(
                f"n_fft={cfg.n_fft} < win_length={cfg.win_length} truncates every frame before its FFT; "
                f"set n_fft >= win_length (512 in microsoft/Phi-4-multimodal-instruct)"
            )
        return cfg

    @classmethod
    def hf_keys(cls) -> tuple[str, ...]:
        """The fields that are settings of HF's extractor."""
        return tuple(k for k in asdict(cls()) if k != "periodic_window")

    def hf_settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.hf_keys()}

    def to_dict(self) -> dict[str, Any]:
        return {EXTRACTOR_TYPE_KEY: self.extractor_type, **self.hf_settings()}

    def hf_extractor(self) -> Phi4MultimodalFeatureExtractor:
        """HF's own extractor configured like this (the reference :func:`phi4_log_mel` matches)."""
        return Phi4MultimodalFeatureExtractor(**self.hf_settings())

    def with_known_bug(self) -> Phi4MultimodalFeatures:
        """A periodic Hamming window (``torch.hamming_window``'s default) instead of HF's symmetric one."""
        return replace(self, periodic_window=True)


@lru_cache(maxsize=8)
def fbank_mel_filters(cfg: Phi4MultimodalFeatures) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]`` float32 Kaldi mel matrix, identical to the extractor's ``mel_filters``."""
    filters = mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1,
        num_mel_filters=cfg.n_mels,
        min_frequency=cfg.mel_min_frequency,
        max_frequency=cfg.mel_max_frequency,
        sampling_rate=cfg.sampling_rate,
        triangularize_in_mel_space=True,
        mel_scale=MEL_SCALE,
    )
    return torch.from_numpy(filters).float()


@lru_cache(maxsize=8)
def hamming_window(win_length: int, periodic: bool) -> torch.Tensor:
    """The float64 Hamming window of ``win_length`` samples (HF's: ``periodic=False``)."""
    return torch.hamming_window(win_length, periodic=periodic, dtype=torch.float64)


def fbank_block(frames: torch.Tensor, cfg: Phi4MultimodalFeatures, out: torch.Tensor) -> None:
    """Log-mel of ``frames [n, win_length]`` float32 into ``out [n, n_mels]``, in HF's order and precision."""
    previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)  # x[i - 1]; the first sample is its own
    emphasized = (frames - cfg.preemphasis * previous) * PCM_SCALE  # float32, as the extractor
    windowed = frames.new_zeros((frames.shape[0], cfg.n_fft), dtype=torch.float64)  # zero-padded to n_fft
    torch.mul(emphasized, hamming_window(cfg.win_length, cfg.periodic_window), out=windowed[:, : cfg.win_length])
    spectrum = torch.fft.rfft(windowed)  # [n, n_fft // 2 + 1] complex128
    power = spectrum.real.square().add_(spectrum.imag.square()).float()  # HF: |X| in complex64, squared (~1 ulp)
    torch.matmul(power, fbank_mel_filters(cfg), out=out)
    out.clamp_(min=MEL_POWER_FLOOR).log_()


def phi4_log_mel(wav: torch.Tensor, cfg: Phi4MultimodalFeatures) -> torch.Tensor:
    """Phi-4-multimodal log-mel of one mono clip: ``[N]`` float -> ``[(N - 400) // 160 + 1, n_mels]`` float32.

    Equal to ``Phi4MultimodalFeatureExtractor()(wav)["audio_input_features"][0]`` (within float
    rounding; every frame is computed from its own samples). Frames run in blocks of
    :data:`BLOCK_FRAMES`, written into one output buffer. A clip shorter than one window gives
    ``[0, n_mels]`` (HF's extractor raises).
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono clip [N], got shape {tuple(wav.shape)}")
    count = cfg.frames(wav.shape[0])
    out = torch.empty(count, cfg.n_mels)
    for start in range(0, count, BLOCK_FRAMES):
        stop = min(start + BLOCK_FRAMES, count)
        segment = wav[start * cfg.hop_length : (stop - 1) * cfg.hop_length + cfg.win_length]
        fbank_block(segment.unfold(0, cfg.win_length, cfg.hop_length), cfg, out[start:stop])
    return out
