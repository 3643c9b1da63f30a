"""ESPnet's SpeechLM front end: the features ESPnet 202611's own ``ContinuousAudioIO.preprocess`` computes.

ESPnet calls the checkpoint's ``WhisperFeatureExtractor`` on the clip *unpadded* (``max_length=N``,
``truncation=False``) with ``do_normalize=True``: the clip is zero-mean/unit-variance normalised,
then Whisper's log-mel runs with a reflected end and keeps ``N // hop`` frames, clamped to 80 dB
below their own maximum. (The model's own processor instead zero-pads to 300 s, does not
normalise and keeps ``ceil(N / hop)`` frames: :class:`~contaudio.features.whisper.FeatureConfig`.)
A model trained through ESPnet's class saw these values, so ``frontend="espnet"`` reproduces them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contaudio.audio import log_once, normalize
from contaudio.features.whisper import FeatureConfig, reflected_log_mel
from contaudio.lengths import IntOrTensor


@dataclass(frozen=True)
class EspnetWhisperFeatures(FeatureConfig):
    """The checkpoint's Whisper extractor settings, run the way ESPnet's ``ContinuousAudioIO`` runs them.

    Not registered by extractor type: it is a way of *calling* ``WhisperFeatureExtractor``, chosen
    by ``frontend="espnet"``, not another extractor. Clips need more than ``n_fft // 2`` samples
    (the reflection; ESPnet's extractor fails inside ``torch.stft`` there, this raises a ValueError).
    """

    @classmethod
    def of(cls, features: FeatureConfig) -> EspnetWhisperFeatures:
        """The same extractor settings (mel bins, FFT, hop, rate), called as ESPnet calls them."""
        return cls(**features.hf_settings(), dynamic_range=features.dynamic_range)

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """``N // hop``: the extractor's frames for an unpadded clip (the STFT's last frame dropped).

        >>> [EspnetWhisperFeatures().frames(n) for n in (159, 160, 16000, 16159)]
        [0, 1, 100, 100]
        """
        return num_samples // self.hop_length

    def check_samples(self, num_samples: IntOrTensor) -> None:
        """ESPnet's ``find_length`` counts a clip its ``preprocess`` cannot extract (``<= n_fft // 2`` samples:
        0 or 1 rows), and so does this front end, which keeps its counts: with a warning, once, that ``preprocess``
        refuses such a clip (drop clips that short from the data before training)."""
        if isinstance(num_samples, torch.Tensor):
            if not num_samples.numel():
                return
            num_samples = int(num_samples.min())
        if num_samples <= self.n_fft // 2:
            log_once(
                "espnet-too-short",
                f"find_length counts a clip of {num_samples} samples as ESPnet's class does, but preprocess refuses it "
                f"(the unpadded log-mel reflects n_fft // 2 = {self.n_fft // 2} samples at each end): drop clips of "
                f"<= {self.n_fft // 2} samples from the data",
            )

    def compute(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[N]`` float32 at 16 kHz -> ``[N // hop, n_mels]``: normalise over the clip, then the reflected log-mel."""
        clip = np.asarray(torch.as_tensor(wav, dtype=torch.float32))  # the extractor normalises in float32 numpy
        return reflected_log_mel(torch.from_numpy(normalize(clip)), self)

    def compute_batch(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each clip on its own (its normalisation and clamp are its own)."""
        return [self.compute(wav) for wav in wavs]
