"""``collate_mels``: preprocess outputs -> encode_batch inputs; batched encode equals one-at-a-time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import SAMPLE_RATE, noise

from contaudio.collate import collate_mels, mel_of

TOLERANCE = 1e-5
# 3 frames (1 row) .. > 2 chunks of 200 frames, and exact chunk multiples +- 1
CLIP_SAMPLES = [480, 32_000, 31_999, 32_161, 64_000, 70_123, 300]


def test_layout_and_zero_padding(tiny_io, rng) -> None:
    outputs = tiny_io.preprocess_batch([(noise(rng, n), SAMPLE_RATE) for n in CLIP_SAMPLES])
    mel, lengths = collate_mels(outputs)
    frames = [out[1][1].shape[0] for out in outputs]
    assert mel.dtype == torch.float32 and lengths.dtype == torch.int64
    assert tuple(mel.shape) == (len(outputs), max(frames), tiny_io.n_mels)
    assert lengths.tolist() == frames
    for row, out in enumerate(outputs):
        assert torch.equal(mel[row, : frames[row]], torch.from_numpy(out[1][1]))
        assert not mel[row, frames[row] :].any()


def test_batched_encode_equals_one_at_a_time(tiny_io, rng) -> None:
    outputs = [tiny_io.preprocess((noise(rng, n), SAMPLE_RATE)) for n in CLIP_SAMPLES]
    with torch.inference_mode():
        batched = tiny_io.encode_batch(*collate_mels(outputs, pad_to_multiple=200))
        alone = [tiny_io.encode_batch(*collate_mels([out]))[0] for out in outputs]
    for out, ours, ref in zip(outputs, batched, alone, strict=True):
        assert ours.shape == ref.shape == (out[1][0], tiny_io.feature_dim())
        assert torch.allclose(ours, ref, rtol=0.0, atol=TOLERANCE)


def test_accepts_arrays_and_tensors_and_pads_to_multiple() -> None:
    mel, lengths = collate_mels([np.ones((5, 4), dtype=np.float64), torch.ones(2, 4)], pad_to_multiple=4)
    assert tuple(mel.shape) == (2, 8, 4) and lengths.tolist() == [5, 2]
    assert mel.sum().item() == 7 * 4


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([], "at least one"),
        ([np.ones((3, 4)), np.ones((3, 5))], "shape"),
        ([np.ones(4)], "shape"),
    ],
)
def test_rejects_bad_batches(items, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        collate_mels(items)


def test_rejects_unknown_items() -> None:
    with pytest.raises(TypeError, match="preprocess output"):
        mel_of([1, 2, 3])
    with pytest.raises(ValueError, match="pad_to_multiple"):
        collate_mels([np.ones((3, 4))], pad_to_multiple=0)
