"""Audio Flamingo 3: rows equal the processor's own token count; the processor's 600 s limit is honoured by a
clear error, never a cut; each 30 s piece is extracted on its own, as its processor does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import TINY_AUDIOFLAMINGO3
from transformers.models.audioflamingo3.processing_audioflamingo3 import AudioFlamingo3Processor

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.windows import ClipTooLongError

FAMILY = get_family("audioflamingo3")


def test_rows_equal_the_processors_token_count() -> None:
    frames = torch.tensor([1, 2, 3, 4, 100, 2999, 3000, 3001, 3003, 6000, 17999, 60000])
    tokens = AudioFlamingo3Processor._get_audio_token_length(None, frames)
    assert torch.equal(FAMILY.rows(frames), tokens)


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_AUDIOFLAMINGO3, weights="random", dtype="float32",
                             long_clip="windows", skip_init_encoder=True)  # fmt: skip


def test_600_s_is_the_limit_and_longer_clips_raise(io) -> None:
    assert io.find_length(600 * 16000) == 15000
    with pytest.raises(ClipTooLongError, match="at most 60000 mel frames"):
        io.find_length(600 * 16000 + 1)


def test_each_30_s_piece_is_extracted_on_its_own(io, rng) -> None:
    wav = noise(rng, 35 * 16000)
    wav[: 30 * 16000] *= 100.0  # a loud first window: a whole-clip clamp would floor the quiet second one
    _, (_, mel), _ = io.preprocess((wav, 16000))
    features, frames = FAMILY.hf_inputs(io.features.hf_extractor(), wav)
    assert mel.shape[0] == frames == 3500
    assert np.abs(mel - features[0, :, :frames].T.numpy()).max() <= 1e-4
