"""Qwen3-ASR: the length rule equals HF's own helper for every M; a batch equals each clip alone (HF's own
batched call does not: the frames after a short clip leak into its last chunk)."""

from __future__ import annotations

import pytest
import torch
from helpers.checkpoints import TINY_QWEN3_ASR
from transformers.models.qwen3_asr.modeling_qwen3_asr import _get_feat_extract_output_lengths

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family

FAMILY = get_family("qwen3_asr")


def test_rows_equal_hfs_length_helper_for_every_m() -> None:
    frames = torch.arange(1, 3001)
    assert torch.equal(FAMILY.rows(frames), _get_feat_extract_output_lengths(frames))
    assert [FAMILY.rows(m) for m in (1, 50, 100, 101)] == [1, 7, 13, 14]


@pytest.fixture(scope="module")
def io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN3_ASR, weights="random", dtype="float32")


def test_hfs_batched_call_differs_from_the_clip_alone_ours_does_not(io) -> None:
    """Why the oracle runs one clip per call: HF's features of a shorter clip are followed by the next frames."""
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 250, io.n_mels, generator=generator)
    lengths = torch.tensor([250, 130])
    with torch.inference_mode():
        alone = [
            io.family.reference_forward(io.encoder, mel[i : i + 1, :n], lengths[i : i + 1])
            for i, n in enumerate([250, 130])
        ]
        ours = io.encode_batch(mel, lengths)
        features = mel.transpose(1, 2)  # HF's batched layout: the short clip's chunk sees frames 130..199
        features = torch.nn.functional.pad(features, (0, 50))
        hf_batched = io.family.hf_encode(io.encoder, features, lengths)
    for clip, ref in zip(ours, alone, strict=True):
        torch.testing.assert_close(clip, ref, atol=1e-5, rtol=0)
    short = hf_batched[alone[0].shape[0] :]
    assert float((short - alone[1]).abs().max()) > 1e-3


def test_a_clip_under_half_a_second_gets_the_extractors_50_frames(io) -> None:
    _, (rows, mel), _ = io.preprocess((torch.zeros(1, 1600), 16000))
    assert mel.shape[0] == 50 and rows == io.find_length(1600) == 7
