"""Granite Speech's features (``GraniteSpeechFeatureExtractor``), computed on each clip's own length.

HF's extractor: a torchaudio ``MelSpectrogram`` (n_fft 512, Hann window of 400, hop 160, 80 HTK mels,
power 2, centred frames with reflect padding), ``log10(max(mel, 1e-10))``, clamped to 80 dB below the
clip's loudest value, rescaled ``x / 4 + 1``; an odd last frame is dropped and consecutive frames are
stacked in pairs, so the model sees one 160-value frame per 20 ms:

    STFT frames   F0 = N // 160 + 1              (centred frames of N samples)
    model frames  F  = F0 // 2 = (N // 160 + 1) // 2

A clip alone is never padded (the processor pads a batch to its longest clip, with zeros, so a shorter
clip's last frames and clamp change with the batch; contaudio keeps the clip-alone result, the one the
model gets for a single audio). So HF's path already costs what the clip costs; this featurizer is the
same arithmetic with less around it (no module transfer, no numpy round trip, ``re^2 + im^2`` instead
of ``|X|^2`` through a square root).

torchaudio's reflect padding needs more than ``n_fft // 2`` (256) samples: HF's extractor raises for
shorter clips and so does :meth:`GraniteSpeechFeatures.compute`.

The values share no code with the reference's spectrogram: the mel matrix is ``transformers.audio_utils``'
``mel_filter_bank`` (HTK, no normalisation; the same triangles as torchaudio's ``melscale_fbanks``), the STFT
``torch.stft``. HF's extractor runs on torchaudio where it is installed, else on contaudio's stand-in for
torchaudio's ``MelSpectrogram`` (:mod:`contaudio.features.torchaudio_mel`, checked on its own against a
numpy spectrogram and torchaudio), installed only while :meth:`GraniteSpeechFeatures.hf_extractor` builds it
and while the family's oracle calls it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, ClassVar

import torch
from transformers.audio_utils import mel_filter_bank
from transformers.models.granite_speech.feature_extraction_granite_speech import GraniteSpeechFeatureExtractor

from contaudio.features.base import EXTRACTOR_TYPE_KEY, Featurizer, register_featurizer
from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech
from contaudio.lengths import IntOrTensor

LOG_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum (80 dB)
LOG_SCALE = 4.0  # HF's rescale: log_mel / 4 + 1
LOG_OFFSET = 1.0
FRAMES_STACKED = 2  # consecutive STFT frames concatenated into one model frame
BUGGY_DYNAMIC_RANGE = 7.0  # with_known_bug: a 70 dB clamp instead of 80 dB
# our field name -> HF's preprocessor_config.json key (``n_mels`` / ``hop_length`` are the base class's
# properties: values and samples per *model* frame, i.e. after stacking)
HF_NAMES = {"mel_bins": "n_mels", "stft_hop": "hop_length"}
MEL_F_MIN = 0.0  # HF's extractor leaves torchaudio's f_min = 0 and f_max = sampling_rate // 2
MEL_SCALE = "htk"  # torchaudio's default mel scale, without filter normalisation


@register_featurizer
@dataclass(frozen=True)
class GraniteSpeechFeatures(Featurizer):
    """Granite Speech's log-mel with frame pairs stacked: the settings of HF's ``GraniteSpeechFeatureExtractor``.

    ``mel_bins`` and ``stft_hop`` are HF's ``n_mels`` and ``hop_length`` (of one STFT frame); the
    featurizer's :attr:`n_mels` (160) and :attr:`hop_length` (320 samples) describe a stacked model
    frame. ``dynamic_range`` is not a setting of HF's extractor (always 80 dB): it exists for
    :meth:`with_known_bug` and is never read from or written to a config.
    """

    extractor_type: ClassVar[str] = "GraniteSpeechFeatureExtractor"
    sampling_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    stft_hop: int = 160
    mel_bins: int = 80
    projector_window_size: int = 15  # HF uses these two for the processor's row count only
    projector_downsample_rate: int = 5
    padding_value: float = 0.0
    dynamic_range: float = field(default=DYNAMIC_RANGE, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length={self.win_length} must lie in 1..n_fft={self.n_fft} (torch.stft needs it)")
        if min(self.stft_hop, self.mel_bins, self.sampling_rate) < 1:
            raise ValueError(
                f"hop_length={self.stft_hop}, n_mels={self.mel_bins} and sampling_rate={self.sampling_rate} "
                "must be positive"
            )

    @property
    def n_mels(self) -> int:
        """Values per model frame: two stacked mel frames (160)."""
        return FRAMES_STACKED * self.mel_bins

    @property
    def hop_length(self) -> int:
        """Samples per model frame: two STFT hops (320, i.e. 50 frames per second)."""
        return FRAMES_STACKED * self.stft_hop

    @property
    def min_samples(self) -> int:
        """The shortest clip the extractor takes: reflect padding needs more than ``n_fft // 2`` samples."""
        return self.n_fft // 2 + 1

    def too_short(self, num_samples: int) -> str:
        return (
            f"Granite Speech features need a clip of at least {self.min_samples} samples (torchaudio's reflect "
            f"padding of n_fft // 2; HF's extractor raises too), got {num_samples}: drop the clip or pad it"
        )

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """Model frames for ``N`` samples: ``(N // stft_hop + 1) // 2`` (centred STFT frames, an odd last one dropped).

        >>> [GraniteSpeechFeatures().frames(n) for n in (159, 160, 319, 320, 479, 480, 16000)]
        [0, 1, 1, 1, 1, 2, 50]
        """
        return (num_samples // self.stft_hop + 1) // FRAMES_STACKED

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        return granite_log_mel(wav, self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GraniteSpeechFeatures:
        """Build from a ``preprocessor_config.json`` dict, reading what HF's extractor reads.

        HF's ``__init__`` takes ``n_fft``, ``win_length``, ``hop_length``, ``n_mels`` and
        ``sampling_rate`` as its own arguments (defaults where absent) and rebuilds ``melspec_kwargs``
        from them, so a saved ``melspec_kwargs`` is ignored here as there; other keys do not change
        the features.
        """
        kind = raw.get(EXTRACTOR_TYPE_KEY)
        if kind != cls.extractor_type:
            raise ValueError(
                f"{EXTRACTOR_TYPE_KEY}={kind!r} is not {cls.extractor_type!r}; "
                "use contaudio.features.featurizer_from_dict to pick the right featurizer"
            )
        names = {HF_NAMES.get(name, name): name for name in cls.hf_fields()}
        return cls(**{names[key]: value for key, value in raw.items() if key in names})

    @classmethod
    def hf_fields(cls) -> tuple[str, ...]:
        """Our fields that are settings of HF's extractor."""
        return tuple(name for name in asdict(cls()) if name != "dynamic_range")

    def to_dict(self) -> dict[str, Any]:
        """HF's ``preprocessor_config.json`` keys (with ``feature_extractor_type``)."""
        settings = {HF_NAMES.get(name, name): getattr(self, name) for name in self.hf_fields()}
        return {EXTRACTOR_TYPE_KEY: self.extractor_type, **settings}

    def hf_extractor(self) -> GraniteSpeechFeatureExtractor:
        """HF's own extractor configured like this, on torchaudio's ``MelSpectrogram``.

        Where torchaudio is missing it is built on contaudio's stand-in, which HF's module holds only while
        this runs; HF's extractor then checks for torchaudio again on every call, so call it inside
        :func:`~contaudio.features.torchaudio_mel.torchaudio_for_hf_granite_speech`, as the family's
        ``hf_inputs`` and ``oracle`` do."""
        settings = {key: value for key, value in self.to_dict().items() if key != EXTRACTOR_TYPE_KEY}
        with torchaudio_for_hf_granite_speech():
            return GraniteSpeechFeatureExtractor(**settings)

    def with_known_bug(self) -> GraniteSpeechFeatures:
        """The clamp keeps 70 dB below the clip's peak instead of 80 dB."""
        return replace(self, dynamic_range=BUGGY_DYNAMIC_RANGE)


@lru_cache(maxsize=8)
def stft_constants(cfg: GraniteSpeechFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """The periodic Hann window ``[win_length]`` and the HTK mel matrix ``[n_fft // 2 + 1, mel_bins]`` (cached),
    the latter by ``transformers.audio_utils.mel_filter_bank`` in float64, then float32."""
    filters = mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1,
        num_mel_filters=cfg.mel_bins,
        min_frequency=MEL_F_MIN,
        max_frequency=float(cfg.sampling_rate // 2),
        sampling_rate=cfg.sampling_rate,
        norm=None,
        mel_scale=MEL_SCALE,
    )
    return torch.hann_window(cfg.win_length), torch.from_numpy(filters).float()


def granite_log_mel(wav: torch.Tensor, cfg: GraniteSpeechFeatures) -> torch.Tensor:
    """One mono clip ``[N]`` -> ``[(N // 160 + 1) // 2, 160]`` float32, as HF's extractor gives the clip alone.

    Centred STFT frames (reflect padding) -> power -> mel -> ``log10(max(., 1e-10))`` -> clamp at the
    clip's maximum minus 80 dB (over every STFT frame, the dropped odd one included, as HF takes it)
    -> ``/ 4 + 1`` -> pairs of frames side by side.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.ndim != 1:
        raise ValueError(f"Granite Speech features need one mono clip [N], got shape {tuple(wav.shape)}")
    cfg.check_samples(wav.shape[0])
    window, filters = stft_constants(cfg)
    spec = torch.stft(
        wav, cfg.n_fft, cfg.stft_hop, cfg.win_length, window, center=True, pad_mode="reflect", return_complex=True
    )  # [n_freqs, F0]
    power = spec.real.square().add_(spec.imag.square())
    log_mel = torch.matmul(power.T, filters).clamp_(min=LOG_FLOOR).log10_()  # [F0, mel_bins]
    log_mel = torch.maximum(log_mel, log_mel.max() - cfg.dynamic_range).div_(LOG_SCALE).add_(LOG_OFFSET)
    frames = log_mel.shape[0] // FRAMES_STACKED
    return log_mel[: frames * FRAMES_STACKED].reshape(frames, FRAMES_STACKED * cfg.mel_bins)
