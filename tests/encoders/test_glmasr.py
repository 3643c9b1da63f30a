"""GLM-ASR: 50 Hz rows per 30 s window, windows as its processor cuts them, the processor's 21-window limit
honoured by a clear error; the FLOP rule counts grouped key/value heads."""

from __future__ import annotations

import pytest
import torch
from helpers.checkpoints import TINY_GLMASR
from transformers.models.glmasr.processing_glmasr import GlmAsrProcessor

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.windows import ClipTooLongError

FAMILY = get_family("glmasr")


def test_rows_merged_by_four_equal_the_processors_token_count_per_window() -> None:
    """Four tower rows make one LM row: the processor's count is the merge of our rows, window by window."""
    frames = torch.tensor([4, 100, 2999, 3000, 6000])
    tokens = GlmAsrProcessor._get_audio_token_length(None, frames)
    merged = torch.tensor(
        [sum((r - 4) // 4 + 1 for r in [1500] * (m // 3000) + [FAMILY.rows(m % 3000)] if r) for m in frames.tolist()]
    )
    assert torch.equal(tokens, merged)
    assert [FAMILY.rows(m) for m in (1, 3000, 3001)] == [1, 1500, 1501]


def test_the_processors_21_windows_are_the_limit() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_GLMASR, weights="random", dtype="float32", long_clip="windows",
                           skip_init_encoder=True)  # fmt: skip
    assert io.find_length(21 * 30 * 16000) == 21 * 1500
    with pytest.raises(ClipTooLongError, match="630 s"):
        io.find_length(21 * 30 * 16000 + 160)
