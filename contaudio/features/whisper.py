"""Whisper-compatible log-mel features computed on the clip's own length (the Whisper featurizer).

HF's ``WhisperFeatureExtractor`` (which Qwen's processors use) zero-pads every
clip to ``n_samples`` (300 s for Qwen2.5-Omni) before its STFT. The valid frames
only see the clip plus zeros, so computing the STFT on the clip padded *just
past its end* gives the same values, provided the dynamic-range clamp
``max(log_spec, log_spec.max() - 8)`` takes its maximum over the frames the
extractor sees that are not pure silence: every frame whose window overlaps the
clip (frames of pure padding sit at the floor and never hold the maximum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from contaudio.features.base import EXTRACTOR_TYPE_KEY, Featurizer, register_featurizer
from contaudio.lengths import IntOrTensor, mel_frames

LOG_FLOOR = 1e-10  # power floor before log10, as in Whisper
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum (80 dB)
LOG_OFFSET = 4.0  # Whisper's affine rescale: (log_spec + 4) / 4
LOG_SCALE = 4.0
WHISPER_MEL_FMAX = 8000.0  # the extractor's fixed upper mel edge (Hz)
BUGGY_DYNAMIC_RANGE = 7.0  # with_known_bug: a 70 dB clamp instead of 80 dB
NOT_HF_SETTINGS = ("dynamic_range", "waveform_window_s", "unpadded")  # FeatureConfig fields HF's extractor lacks


@register_featurizer
@dataclass(frozen=True)
class FeatureConfig(Featurizer):
    """Whisper's log-mel (``WhisperFeatureExtractor``): the parts of a ``preprocessor_config.json`` that define it.

    Three fields are not settings of HF's extractor and are never read from or written to a config:
    ``dynamic_range`` (always 80 dB in HF; :meth:`with_known_bug` changes it);
    ``waveform_window_s``: when > 0, the waveform is cut into pieces of that many seconds and
    each piece gets its own log-mel (its own clamp, its own zero-padded end), concatenated, as
    the Audio Flamingo 3 and GLM-ASR processors cut a clip into 30 s windows before extracting.
    The frame count is unchanged when a piece is a whole number of hops (30 s is 3000);
    ``unpadded``: the extractor is called on the clip alone without padding, as a processor with
    ``padding=True`` calls it for one clip (Qwen3-Omni's): ``N // hop`` frames with a reflected end
    (:func:`reflected_log_mel`), and a clip of ``<= n_fft // 2`` samples is refused, as HF's STFT
    refuses it. With ``unpadded=False`` (the default) the clip is as the extractor's ``max_length``
    padding gives it: ``ceil(N / hop)`` frames, zeros past its end.
    """

    extractor_type: ClassVar[str] = "WhisperFeatureExtractor"
    sampling_rate: int = 16000
    feature_size: int = 128  # n_mels
    n_fft: int = 400
    hop_length: int = 160  # type: ignore[assignment]  (a field here, a property in the base)
    chunk_length: int = 30  # seconds the HF extractor pads every clip to
    padding_value: float = 0.0
    dither: float = 0.0
    dynamic_range: float = field(default=DYNAMIC_RANGE, repr=False)
    waveform_window_s: int = 0
    unpadded: bool = False

    def __post_init__(self) -> None:
        if self.unpadded and self.waveform_window_s:
            raise ValueError(
                "FeatureConfig: unpadded=True (the clip alone, reflected end) and waveform_window_s > 0 (30 s pieces, "
                "each zero-padded) describe two different processors; set one of them"
            )

    @property
    def n_mels(self) -> int:
        return self.feature_size

    @property
    def n_samples(self) -> int:
        """Samples the HF extractor pads to: ``chunk_length * sampling_rate``."""
        return self.chunk_length * self.sampling_rate

    @property
    def max_frames(self) -> int:
        """Frames the HF extractor returns: ``n_samples // hop_length`` (30000 for 300 s)."""
        return self.n_samples // self.hop_length

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """The frames the extractor's attention mask marks valid: ``ceil(N / hop)`` with max_length padding,
        ``N // hop`` for a clip it does not pad (``unpadded``: the STFT's last frame is dropped).

        >>> [FeatureConfig().frames(n) for n in (16000, 16001, 16159)], FeatureConfig(unpadded=True).frames(16159)
        ([100, 101, 101], 100)
        """
        if self.unpadded:
            return num_samples // self.hop_length
        return mel_frames(num_samples, self.hop_length)

    @property
    def min_samples(self) -> int:
        """0, or with ``unpadded`` ``n_fft // 2 + 1``: the STFT's reflection of ``n_fft // 2`` samples needs more."""
        return self.n_fft // 2 + 1 if self.unpadded else 0

    def too_short(self, num_samples: int) -> str:
        return (
            f"a clip of {num_samples} samples is too short for Whisper's log-mel on the unpadded clip (as "
            f"Qwen3-Omni's processor computes it): the STFT reflects n_fft // 2 = {self.n_fft // 2} samples at each "
            f"end, so it needs at least {self.min_samples} ({self.min_samples / self.sampling_rate * 1000:.1f} ms at "
            f"{self.sampling_rate} Hz; HF's extractor raises inside torch.stft); drop the clip or zero-pad it"
        )

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        if self.unpadded:
            self.check_samples(wav.shape[-1])
            return reflected_log_mel(wav, self)
        if self.waveform_window_s:
            return torch.cat(self.compute_batch(list(self.waveform_pieces(wav))))
        return log_mel(wav, self)

    def compute_batch(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Batched STFTs (:func:`log_mel_batch`): equal to :meth:`compute` per clip within :data:`BATCHED_ATOL`
        (``unpadded``: each clip on its own, its frames and clamp depend on its own end only)."""
        if self.unpadded:
            return [self.compute(wav) for wav in wavs]
        if not self.waveform_window_s:
            return log_mel_batch(wavs, self)
        pieces = [self.waveform_pieces(wav) for wav in wavs]
        mels = iter(log_mel_batch([piece for clip in pieces for piece in clip], replace(self, waveform_window_s=0)))
        return [torch.cat([next(mels) for _ in clip]) for clip in pieces]

    def waveform_pieces(self, wav: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The clip cut into consecutive ``waveform_window_s`` pieces (the last shorter), as the processor cuts it."""
        wav = torch.as_tensor(wav, dtype=torch.float32)
        return wav.split(self.waveform_window_s * self.sampling_rate) if wav.shape[0] else (wav,)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureConfig:
        """Build from a ``preprocessor_config.json`` dict, ignoring unrelated keys."""
        kind = raw.get(EXTRACTOR_TYPE_KEY, cls.extractor_type)
        if kind != cls.extractor_type:
            raise ValueError(f"{kind!r} is not {cls.extractor_type}; use contaudio.features.featurizer_from_dict")
        cfg = cls(**{k: raw[k] for k in cls.hf_keys() if k in raw})
        if cfg.dither != 0.0:
            raise ValueError(f"dither={cfg.dither} makes features random; contaudio supports dither=0.0 only")
        return cfg

    @classmethod
    def hf_keys(cls) -> tuple[str, ...]:
        """The fields that are settings of HF's extractor."""
        return tuple(k for k in asdict(cls()) if k not in NOT_HF_SETTINGS)

    def hf_settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.hf_keys()}

    def to_dict(self) -> dict[str, Any]:
        return {EXTRACTOR_TYPE_KEY: self.extractor_type, **self.hf_settings()}

    def hf_extractor(self) -> WhisperFeatureExtractor:
        """HF's own extractor configured like this (the reference that :func:`log_mel` matches)."""
        return WhisperFeatureExtractor(**self.hf_settings())

    def with_known_bug(self) -> FeatureConfig:
        """The clamp keeps 70 dB below the clip's peak instead of 80 dB."""
        return replace(self, dynamic_range=BUGGY_DYNAMIC_RANGE)


@lru_cache(maxsize=8)
def mel_filters(cfg: FeatureConfig) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]`` float32 Slaney mel matrix, identical to the extractor's."""
    filters = mel_filter_bank(
        num_frequency_bins=1 + cfg.n_fft // 2,
        num_mel_filters=cfg.n_mels,
        min_frequency=0.0,
        max_frequency=WHISPER_MEL_FMAX,
        sampling_rate=cfg.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters).float()


def power_spectrum(spec: torch.Tensor) -> torch.Tensor:
    """``|X|^2`` of a complex STFT as ``re^2 + im^2`` (3x faster on CPU than ``abs().square()``, no sqrt)."""
    return spec.real.square().add_(spec.imag.square())


@lru_cache(maxsize=8)
def hann_window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def frames_seen(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames whose analysis window overlaps the clip: ``f * hop - n_fft // 2 < N``.

    Capped at ``max_frames`` for clips the extractor would hold whole (it drops
    the STFT's last frame). The clamp maximum is taken over these frames.

    >>> frames_seen(16000, FeatureConfig())
    102
    """
    seen = (num_samples + cfg.n_fft // 2 - 1) // cfg.hop_length + 1
    return min(seen, cfg.max_frames) if num_samples <= cfg.n_samples else seen


def stft_length(num_samples: int, cfg: FeatureConfig) -> int:
    """Samples to zero-pad the clip to so every frame we keep sees what the extractor sees.

    The STFT's reflect padding mirrors the last ``n_fft // 2`` samples before the
    end; padding at least ``n_fft // 2 + 1`` zeros makes that mirror pure
    silence. A clip the extractor holds whole is padded to ``n_samples`` exactly,
    so the mirror near 300 s is the extractor's too.
    """
    needed = num_samples + cfg.n_fft // 2 + 1
    return min(needed, cfg.n_samples) if num_samples <= cfg.n_samples else needed


LOG_MEL_BLOCK_FRAMES = 4096  # STFT frames per block in log_mel (~41 s): temporaries stay small for any length


def log_mel(wav: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel of one mono clip: ``[N]`` float -> ``[ceil(N / hop), n_mels]`` float32.

    Equal to ``WhisperFeatureExtractor(...)(wav, padding="max_length")`` on its
    ``ceil(N / hop)`` valid frames, at a cost proportional to N rather than 300 s.
    The STFT runs over blocks of ``LOG_MEL_BLOCK_FRAMES`` frames written into one
    ``[frames, n_mels]`` buffer, so peak memory is the clip, one padded copy and
    the output (plus a constant), however long the clip.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    num_samples = wav.shape[-1]
    half = cfg.n_fft // 2
    padded = torch.nn.functional.pad(wav, (0, stft_length(num_samples, cfg) - num_samples))
    padded = torch.nn.functional.pad(padded[None], (half, half), mode="reflect")[0]  # torch.stft(center=True)'s
    seen = frames_seen(num_samples, cfg)
    log_spec = torch.empty(seen, cfg.n_mels)  # [seen, n_mels]
    for start in range(0, seen, LOG_MEL_BLOCK_FRAMES):
        stop = min(start + LOG_MEL_BLOCK_FRAMES, seen)
        segment = padded[start * cfg.hop_length : (stop - 1) * cfg.hop_length + cfg.n_fft]
        spec = torch.stft(
            segment, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), center=False, return_complex=True
        )  # [n_freq, stop - start]
        torch.matmul(power_spectrum(spec).T, mel_filters(cfg), out=log_spec[start:stop])
    log_spec = log_spec.clamp_(min=LOG_FLOOR).log10_()
    log_spec = log_spec.clamp_(min=float(log_spec.max()) - cfg.dynamic_range)
    return log_spec[: mel_frames(num_samples, cfg.hop_length)].add_(LOG_OFFSET).div_(LOG_SCALE)


def reflected_log_mel(wav: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Whisper's log-mel of a clip as HF's extractor computes it *unpadded*: ``[N]`` -> ``[N // hop, n_mels]``.

    What ``WhisperFeatureExtractor`` gives a clip it does not pad (``max_length=N``, Qwen3-ASR's and
    Qwen3-Omni's ``padding=True`` on a clip alone, ESPnet's ``ContinuousAudioIO``): ``torch.stft(center=True)``
    reflects ``n_fft // 2`` samples at both ends, the STFT's last frame is dropped, and the clamp takes the
    maximum over the ``N // hop`` frames kept. The STFT runs in blocks of ``LOG_MEL_BLOCK_FRAMES`` frames so
    memory stays bounded for long audio. Needs ``N > n_fft // 2`` (the reflection), as HF's extractor does.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    half = cfg.n_fft // 2
    if wav.shape[-1] <= half:
        raise ValueError(
            f"a clip of {wav.shape[-1]} samples cannot be reflect-padded by n_fft // 2 = {half}: the unpadded "
            f"extraction needs more than {half} samples ({half / cfg.sampling_rate * 1000:.1f} ms at "
            f"{cfg.sampling_rate} Hz); drop the clip or zero-pad it"
        )
    padded = torch.nn.functional.pad(wav[None], (half, half), mode="reflect")[0]
    frames = wav.shape[-1] // cfg.hop_length
    log_spec = torch.empty(frames, cfg.n_mels)  # [N // hop, n_mels]
    for start in range(0, frames, LOG_MEL_BLOCK_FRAMES):
        stop = min(start + LOG_MEL_BLOCK_FRAMES, frames)
        segment = padded[start * cfg.hop_length : (stop - 1) * cfg.hop_length + cfg.n_fft]
        spec = torch.stft(
            segment, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), center=False, return_complex=True
        )
        torch.matmul(power_spectrum(spec).T, mel_filters(cfg), out=log_spec[start:stop])
    log_spec = log_spec.clamp_(min=LOG_FLOOR).log10_()
    if frames:
        log_spec = log_spec.clamp_(min=float(log_spec.max()) - cfg.dynamic_range)
    return log_spec.add_(LOG_OFFSET).div_(LOG_SCALE)


STFT_BLOCK_FRAMES = 1024  # padded STFT frames per batched call (~10 s of audio): buffers stay in cache
# log_mel_batch vs log_mel: a batched STFT and mel GEMM run other vectorised kernels than one clip's (which ones
# depends on the CPU: AVX2, AVX-512, AMX), so a value may differ in its last float32 bit. Measured: 1.2e-7
# (one ulp at |x| ~ 1) on AVX2 and AVX-512; HF's own extractor is matched within 1e-4 either way.
BATCHED_ATOL = 1e-6


def fits_batched_stft(num_samples: int, cfg: FeatureConfig) -> bool:
    """Whether a clip's frames are unchanged by zero-padding it further than :func:`stft_length`.

    True unless the extractor's ``n_samples`` cap applies (``n_samples - n_fft // 2 - 1 < N <= n_samples``):
    those clips are padded to exactly ``n_samples`` so their end mirror holds clip samples, as the extractor's.

    >>> cfg = FeatureConfig(chunk_length=300)
    >>> [fits_batched_stft(n, cfg) for n in (16000, cfg.n_samples - 201, cfg.n_samples - 200, cfg.n_samples + 1)]
    [True, True, False, True]
    """
    return stft_length(num_samples, cfg) == num_samples + cfg.n_fft // 2 + 1


def stft_blocks(num_samples: list[int], cfg: FeatureConfig, max_block_frames: int | None) -> list[list[int]]:
    """Group clip indices, longest first, so each block's padded STFT holds <= ``max_block_frames`` frames.

    A clip longer than the budget gets a block of its own; ``None`` puts every
    clip in one block. Sorting by length keeps the padding small.

    >>> stft_blocks([16000, 1600, 320000, 3200], FeatureConfig(), 2048)
    [[2], [0, 3, 1]]
    """
    order = sorted(range(len(num_samples)), key=lambda i: num_samples[i], reverse=True)
    if max_block_frames is None:
        return [order] if order else []
    blocks: list[list[int]] = []
    block_frames = 0  # padded frames per clip of the current block (its first, longest clip)
    for index in order:
        if blocks and (len(blocks[-1]) + 1) * block_frames <= max_block_frames:
            blocks[-1].append(index)
        else:
            blocks.append([index])
            block_frames = stft_length(num_samples[index], cfg) // cfg.hop_length + 1
    return blocks


def log_mel_block(clips: list[torch.Tensor], cfg: FeatureConfig) -> list[torch.Tensor]:
    """:func:`log_mel` of clips that all :func:`fits_batched_stft`, with ONE STFT.

    ``[N_i]`` each -> ``[ceil(N_i / hop), n_mels]`` each.

    Clips are zero-padded to the longest one's :func:`stft_length`; the clamp
    maximum of each clip is taken over its own :func:`frames_seen` frames.
    """
    lengths = [clip.shape[0] for clip in clips]
    padded = torch.zeros(len(clips), max(stft_length(n, cfg) for n in lengths))  # [B, samples]
    for row, clip in enumerate(clips):
        padded[row, : lengths[row]] = clip
    seen = torch.tensor([frames_seen(n, cfg) for n in lengths])  # [B]
    spec = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), return_complex=True)
    power = power_spectrum(spec[:, :, : int(seen.max())])  # [B, n_freq, max_seen]
    log_spec = (power.transpose(1, 2) @ mel_filters(cfg)).clamp_(min=LOG_FLOOR).log10_()  # [B, max_seen, n_mels]
    past_seen = torch.arange(log_spec.shape[1]) >= seen[:, None]  # [B, max_seen]
    peak = log_spec.amax(dim=2).masked_fill_(past_seen, -torch.inf).amax(dim=1)  # [B]
    log_spec = log_spec.clamp_(min=(peak - cfg.dynamic_range)[:, None, None]).add_(LOG_OFFSET).div_(LOG_SCALE)
    return [log_spec[row, : mel_frames(n, cfg.hop_length)].clone() for row, n in enumerate(lengths)]


def log_mel_batch(
    wavs: list[np.ndarray | torch.Tensor], cfg: FeatureConfig, max_block_frames: int | None = STFT_BLOCK_FRAMES
) -> list[torch.Tensor]:
    """Log-mel of several mono clips with batched STFTs: ``[N_i]`` each -> ``[ceil(N_i / hop), n_mels]`` each.

    Equal to ``[log_mel(w, cfg) for w in wavs]`` within :data:`BATCHED_ATOL` (a last-bit difference of
    the batched kernels; identical maths: same padding, same clamp maximum per clip). Clips are
    sorted by length and batched into blocks of at most ``max_block_frames``
    padded frames (``None``: one STFT over every clip). On CPU one huge STFT is
    memory-bound and slower than cache-sized blocks; blocks also bound the
    padding when a long clip meets many short ones. Clips within ``n_fft // 2``
    samples below ``n_samples`` (see :func:`fits_batched_stft`) and clips longer
    than one block go one by one through :func:`log_mel`.
    """
    clips = [torch.as_tensor(wav, dtype=torch.float32) for wav in wavs]
    for index, clip in enumerate(clips):
        if clip.ndim != 1:
            raise ValueError(f"clip {index} must be mono [N], got shape {tuple(clip.shape)}")
    out: list[torch.Tensor | None] = [None] * len(clips)
    budget = max_block_frames if max_block_frames is not None else float("inf")
    batchable = [
        i
        for i, clip in enumerate(clips)
        if fits_batched_stft(clip.shape[0], cfg) and stft_length(clip.shape[0], cfg) // cfg.hop_length < budget
    ]
    for index in sorted(set(range(len(clips))) - set(batchable)):
        out[index] = log_mel(clips[index], cfg)
    sizes = [clips[i].shape[0] for i in batchable]
    for block in stft_blocks(sizes, cfg, max_block_frames):
        members = [batchable[i] for i in block]
        for index, mel in zip(members, log_mel_block([clips[i] for i in members], cfg), strict=True):
            out[index] = mel
    return out
