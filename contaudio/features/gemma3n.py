"""Gemma 3n's log-mel (``Gemma3nAudioFeatureExtractor``), computed on the clip's own length.

HF's extractor (the USM front end) frames the waveform with no centring: frame ``i`` covers samples
``[i * hop, i * hop + frame_length]`` (513 samples, one more than the window, for the preemphasis);
HTK-flavoured preemphasis inside each frame, a periodic Hann window of ``frame_length`` (512),
``|rfft|`` zero-padded to ``fft_length`` (1024: the next power of two, doubled by ``fft_overdrive``),
an HTK mel matrix without normalisation (125-7600 Hz), ``log(max(mel, mel_floor))``, then an optional
per-bin mean and standard deviation. No value depends on another frame (no clip-wide clamp as in
Whisper's), so a frame computed alone is the frame HF computes.

Frames. ``Gemma3nProcessor`` calls the extractor with its defaults: ``padding="longest"``,
``pad_to_multiple_of=128``, ``max_length=480_000`` with ``truncation=True``. One clip of ``N`` samples
is zero-padded to ``L = ceil(N / 128) * 128`` and gives ``(L - 513) // 160 + 1`` frames (0 when
``L < 513``: clips of <= 512 samples give none), all of them valid. That is the count here, whatever
the batch: next to a longer clip, the processor gives a clip ``ceil(N / 160)`` frames instead (its mask
counts every frame that *starts* inside the clip, the last ones read the batch's zero padding), 2-3
more. A clip longer than 30 s would be cut at 480,000 samples; contaudio never cuts: it splits the
clip into consecutive 30 s pieces and gives each piece the frames HF's extractor gives that piece
alone (2997 per full piece), which is what the family's ``long_clip="windows"`` policy encodes window
by window (and ``"raise"`` refuses).

Precision. HF's numpy ``rfft`` keeps even the smallest bins of a frame accurate to float32 relative
precision; torch's float32 FFT errs by ~1e-7 of the frame's peak in every bin, so on a pure tone the
mel bands far from it (that far below the peak) come out wrong by up to 4e-2 in the log domain. Here
the preemphasis and window are float32 ops in HF's order, the FFT runs in float64 and the magnitude,
mel matrix and log in float32: equal to HF within 1e-6 on noise, speech, tones and near-silence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor, create_fb_matrix

from contaudio.features.base import EXTRACTOR_TYPE_KEY, Featurizer, register_featurizer
from contaudio.lengths import IntOrTensor, ceil_div

MS_PER_SECOND = 1000.0
PAD_TO_MULTIPLE_OF = 128  # the extractor's call default, kept by Gemma3nProcessor: the clip is padded to a multiple
MAX_LENGTH = 480_000  # the extractor's call default max_length (30 s at 16 kHz), where the processor truncates
PREEMPHASIS_EXTRA_SAMPLES = 1  # each frame reads one sample more than its window, for the preemphasis
MAGNITUDE = 1.0  # HF takes |rfft|; with_known_bug uses the power |rfft|^2 (torchaudio's default) instead
POWER = 2.0
BLOCK_FRAMES = 1024  # frames per FFT call (~10 s of audio): the float64 buffers stay ~8 MB for any length
# Keys of a saved preprocessor_config.json that HF's extractor derives itself (from the *_ms settings and
# fft_overdrive) and ignores when it loads; contaudio checks they agree with what it derives.
DERIVED_KEYS = ("frame_length", "hop_length", "fft_length")
RIGHT = "right"


@register_featurizer
@dataclass(frozen=True)
class Gemma3nLogMel(Featurizer):
    """Gemma 3n's ``Gemma3nAudioFeatureExtractor``: the settings of its ``preprocessor_config.json``.

    ``spectrum_power`` is not a setting of HF's extractor (always the magnitude, 1.0); it exists for
    :meth:`with_known_bug` and is never read from or written to a config. ``per_bin_mean`` and
    ``per_bin_stddev`` are tuples (the dataclass is hashable: its filters are cached per config).
    """

    extractor_type: ClassVar[str] = "Gemma3nAudioFeatureExtractor"
    sampling_rate: int = 16000
    feature_size: int = 128  # n_mels
    padding_value: float = 0.0
    frame_length_ms: float = 32.0
    hop_length_ms: float = 10.0
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = True
    dither: float = 0.0
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-5
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None
    spectrum_power: float = field(default=MAGNITUDE, repr=False)

    def __post_init__(self) -> None:
        for name in ("per_bin_mean", "per_bin_stddev"):
            value = getattr(self, name)
            if value is not None:
                values = tuple(np.asarray(value, dtype=np.float64).reshape(-1).tolist())  # HF saves [1, 1, n_mels]
                if len(values) != self.feature_size:
                    raise ValueError(f"{name} has {len(values)} values; feature_size is {self.feature_size}")
                object.__setattr__(self, name, values)

    # ------------------------------------------------------------------ frame geometry (as HF derives it)
    @property
    def n_mels(self) -> int:
        return self.feature_size

    @property
    def frame_length(self) -> int:
        """Window samples: ``round(sampling_rate * frame_length_ms / 1000)`` (512)."""
        return round(self.sampling_rate * self.frame_length_ms / MS_PER_SECOND)

    @property
    def hop_length(self) -> int:  # type: ignore[override]
        """Samples between frames: ``round(sampling_rate * hop_length_ms / 1000)`` (160)."""
        return round(self.sampling_rate * self.hop_length_ms / MS_PER_SECOND)

    @property
    def fft_length(self) -> int:
        """``2 ** ceil(log2(frame_length))``, doubled with ``fft_overdrive`` (1024)."""
        fft_length = 2 ** math.ceil(math.log2(self.frame_length))
        return 2 * fft_length if self.fft_overdrive else fft_length

    @property
    def frame_span(self) -> int:
        """Samples one frame reads: the window plus the preemphasis' previous sample (513)."""
        return self.frame_length + PREEMPHASIS_EXTRA_SAMPLES

    def piece_frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """Frames HF's extractor gives one clip of ``N <= MAX_LENGTH`` samples, as its processor calls it.

        ``L = ceil(N / 128) * 128`` (the padding), then ``max(0, (L - 513) // 160 + 1)``.

        >>> [Gemma3nLogMel().piece_frames(n) for n in (0, 512, 513, 768, 769, 16000, 480000)]
        [0, 0, 1, 2, 3, 97, 2997]
        """
        padded = ceil_div(num_samples, PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        frames = (padded - self.frame_span) // self.hop_length + 1
        return frames.clamp(min=0) if isinstance(frames, torch.Tensor) else max(frames, 0)

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """Valid frames for ``N`` samples: HF's count for a clip of <= 30 s, and per 30 s piece beyond.

        ``(N // 480000) * 2997 + piece_frames(N % 480000)``, with :meth:`piece_frames` the extractor's
        count for one clip as ``Gemma3nProcessor`` calls it. HF's processor would cut a longer clip at
        480,000 samples; contaudio gives each 30 s piece its own frames instead (never a silent cut).

        >>> cfg = Gemma3nLogMel()
        >>> [cfg.frames(n) for n in (1, 16000, 480000, 480512, 480513, 960000)]
        [0, 97, 2997, 2997, 2998, 5994]
        >>> cfg.frames(torch.tensor([513, 560000])).tolist()
        [1, 3494]
        """
        return (num_samples // MAX_LENGTH) * self.piece_frames(MAX_LENGTH) + self.piece_frames(num_samples % MAX_LENGTH)

    # ------------------------------------------------------------------------------- the features
    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        """``[N]`` float32 at ``sampling_rate`` -> ``[frames(N), n_mels]`` float32 (each 30 s piece on its own).

        The FFT runs over blocks of :data:`BLOCK_FRAMES` frames written into one ``[frames, n_mels]``
        buffer, so memory stays the clip, the output and a constant, however long the clip.
        """
        wav = torch.as_tensor(wav, dtype=torch.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono clip [N], got shape {tuple(wav.shape)}")
        out = torch.empty(self.frames(wav.shape[0]), self.n_mels)
        row = 0
        for piece in wav.split(MAX_LENGTH):
            head, body = self.frame_views(piece)
            for start in range(0, body.shape[0], BLOCK_FRAMES):
                block = slice(start, start + BLOCK_FRAMES)
                spectrum = self.magnitudes(None if head is None else head[block], body[block])
                torch.matmul(spectrum, mel_filters(self), out=out[row : row + spectrum.shape[0]])
                row += spectrum.shape[0]
        log_mel = out.clamp_(min=self.mel_floor).log_()
        if self.per_bin_mean is not None:
            log_mel.sub_(torch.tensor(self.per_bin_mean))
        if self.per_bin_stddev is not None:
            log_mel.div_(torch.tensor(self.per_bin_stddev))
        return log_mel

    def frame_views(self, piece: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One clip of ``<= MAX_LENGTH`` samples -> its preemphasised frames before the window, as views.

        Returns ``(head [F] or None, body [F, w])``: frame ``i`` is ``[head[i], *body[i]]`` (HTK flavour:
        ``(1 - p) * x[i * hop]`` then ``x[k] - p * x[k - 1]``) or ``body[i]`` alone; ``F = piece_frames(N)``.
        The products and differences are float32, in the order HF's numpy code computes them.
        """
        frames = self.piece_frames(piece.shape[0])
        if frames == 0:
            return None, piece.new_empty(0, self.frame_length)
        span = (frames - 1) * self.hop_length + self.frame_span  # samples the frames read
        padded = torch.nn.functional.pad(piece, (0, max(span - piece.shape[0], 0)), value=self.padding_value)[:span]
        if self.input_scale_factor != 1.0:
            padded = padded * self.input_scale_factor
        if self.preemphasis <= 0.0:  # HF: preemphasis off; each frame is its first frame_length samples
            return None, padded.unfold(0, self.frame_length, self.hop_length)[:frames]
        emphasised = padded[1:] - padded[:-1] * self.preemphasis  # [span - 1]: x[k] - p * x[k - 1] for k >= 1
        if not self.preemphasis_htk_flavor:  # HF: x[k] - p * x[k - 1] for the window's samples k = 1..512
            return None, emphasised.unfold(0, self.frame_length, self.hop_length)
        head = padded[: span - self.frame_length : self.hop_length] * (1.0 - self.preemphasis)  # [F]
        return head, emphasised.unfold(0, self.frame_length - 1, self.hop_length)  # [F, 511]

    def magnitudes(self, head: torch.Tensor | None, body: torch.Tensor) -> torch.Tensor:
        """``b`` frames from :meth:`frame_views` -> ``|rfft|`` of the windowed frames ``[b, fft_length // 2 + 1]``.

        The windowed frames are float32 (as HF's); they are written into a zeroed float64
        ``[b, fft_length]`` buffer (an explicit zero padding: ``rfft(..., n=fft_length)`` ran 4x slower
        here) and the FFT runs in float64, as HF's numpy ``rfft`` does; the magnitude is taken in float32.
        """
        frames = body * window(self) if head is None else torch.cat((head[:, None], body), dim=1).mul_(window(self))
        padded = torch.zeros(frames.shape[0], self.fft_length, dtype=torch.float64)
        padded[:, : self.frame_length] = frames
        parts = torch.view_as_real(torch.fft.rfft(padded)).float()  # [b, bins, (re, im)]
        power = parts[..., 0].square().addcmul_(parts[..., 1], parts[..., 1])
        return power.sqrt_() if self.spectrum_power == MAGNITUDE else power.pow_(self.spectrum_power / POWER)

    # ------------------------------------------------------------------------------ configuration
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Gemma3nLogMel:
        """Build from a ``preprocessor_config.json`` dict (unrelated keys, e.g. the image processor's, ignored).

        Refused, with the key and the fix: ``dither != 0`` (random features), ``padding_side="left"``
        (HF then pads before the clip: not reproduced), and a saved ``frame_length``, ``hop_length`` or
        ``fft_length`` that disagrees with what HF derives from ``frame_length_ms``, ``hop_length_ms`` and
        ``fft_overdrive`` (HF ignores the saved values, so such a config does not mean what it says).
        """
        kind = raw.get(EXTRACTOR_TYPE_KEY, cls.extractor_type)
        if kind != cls.extractor_type:
            raise ValueError(f"{kind!r} is not {cls.extractor_type}; use contaudio.features.featurizer_from_dict")
        cfg = cls(**{k: raw[k] for k in cls.hf_keys() if k in raw})
        if cfg.dither != 0.0:
            raise ValueError(
                f"dither={cfg.dither} adds random noise to every clip; contaudio reproduces dither=0.0 only "
                '(set "dither": 0.0 in preprocessor_config.json)'
            )
        if raw.get("padding_side", RIGHT) != RIGHT:
            raise ValueError(
                f"padding_side={raw['padding_side']!r}: contaudio reproduces the extractor's right padding only "
                '(set "padding_side": "right")'
            )
        for key in DERIVED_KEYS:
            if key in raw and raw[key] != getattr(cfg, key):
                raise ValueError(
                    f"{key}={raw[key]} in the config, but HF's {cls.extractor_type} ignores it and derives "
                    f"{key}={getattr(cfg, key)} from frame_length_ms={cfg.frame_length_ms}, "
                    f"hop_length_ms={cfg.hop_length_ms}, fft_overdrive={cfg.fft_overdrive}: set those instead"
                )
        return cfg

    @classmethod
    def hf_keys(cls) -> tuple[str, ...]:
        """The fields that are settings of HF's extractor."""
        return tuple(k for k in asdict(cls()) if k != "spectrum_power")

    def hf_settings(self) -> dict[str, Any]:
        """HF's constructor arguments (lists where HF's config has lists)."""
        settings = {k: v for k, v in asdict(self).items() if k in self.hf_keys()}
        for name in ("per_bin_mean", "per_bin_stddev"):
            if settings[name] is not None:
                settings[name] = list(settings[name])
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The settings, plus the derived keys HF writes into a saved config and ``padding_side``."""
        derived = {key: getattr(self, key) for key in DERIVED_KEYS}
        return {EXTRACTOR_TYPE_KEY: self.extractor_type, **self.hf_settings(), **derived, "padding_side": RIGHT}

    def hf_extractor(self) -> Gemma3nAudioFeatureExtractor:
        """HF's own extractor configured like this (the reference :meth:`compute` matches)."""
        return Gemma3nAudioFeatureExtractor(**self.hf_settings())

    def with_known_bug(self) -> Gemma3nLogMel:
        """The power spectrum ``|X|^2`` (torchaudio's default) instead of HF's magnitude ``|X|``."""
        return replace(self, spectrum_power=POWER)


@lru_cache(maxsize=8)
def mel_filters(cfg: Gemma3nLogMel) -> torch.Tensor:
    """``[fft_length // 2 + 1, n_mels]`` float32: HF's own (float64) HTK mel matrix, unnormalised."""
    filters = create_fb_matrix(
        n_freqs=cfg.fft_length // 2 + 1,
        f_min=cfg.min_frequency,
        f_max=cfg.max_frequency,
        n_mels=cfg.n_mels,
        sample_rate=cfg.sampling_rate,
        fft_length=cfg.fft_length,
        norm=None,
    )
    return torch.from_numpy(filters).float()


@lru_cache(maxsize=8)
def window(cfg: Gemma3nLogMel) -> torch.Tensor:
    """``[frame_length]`` float32 periodic Hann window, computed in float32 exactly as HF's extractor does."""
    arange = np.arange(cfg.frame_length, dtype=np.float32)
    return torch.from_numpy((0.5 * (1 - np.cos(2 * np.pi * arange / cfg.frame_length))).astype(np.float32))
