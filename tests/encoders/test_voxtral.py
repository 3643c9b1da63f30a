"""Voxtral audio tower: loading from a whole checkpoint, Voxtral's own processor + tower, windows, lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_VOXTRAL, card_extractor, noise, padded_batch

from contaudio import ContinuousAudioIO
from contaudio.encoders.windows import ClipTooLongError
from contaudio.lengths import WINDOW_FRAMES, whisper_rows

HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480000 = 30 s: Voxtral's processor pads audio to a multiple of this
D_MODEL = 32
TAIL_SILENCE_SAMPLES = 800  # 50 ms
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_voxtral_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_voxtral_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


def voxtral_processor_rows(model, wav: np.ndarray) -> torch.Tensor:
    """Voxtral's own path: pad the audio to a multiple of 30 s, extract, split into 3000-frame windows,
    run the tower on every window; then keep each window's valid rows (what ``find_length`` counts)."""
    extractor = card_extractor(TINY_VOXTRAL)
    features = extractor(wav, sampling_rate=16000, padding=True, truncation=False, pad_to_multiple_of=WINDOW_SAMPLES,
                         return_attention_mask=True, return_tensors="pt")  # fmt: skip
    mel = features["input_features"][0]  # [n_mels, k * 3000]
    windows = mel.reshape(mel.shape[0], -1, WINDOW_FRAMES).permute(1, 0, 2)  # [k, n_mels, 3000]
    hidden = model.model.audio_tower(windows).last_hidden_state  # [k, 1500, d]
    frames = int(features["attention_mask"].sum())
    valid = [whisper_rows(min(WINDOW_FRAMES, frames - start)) for start in range(0, frames, WINDOW_FRAMES)]
    return torch.cat([h[:n] for h, n in zip(hidden, valid, strict=True)])


def test_loads_only_the_audio_tower_of_a_whole_sharded_checkpoint(io, tiny_voxtral_checkpoint) -> None:
    directory, model = tiny_voxtral_checkpoint
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    reference = model.model.audio_tower.state_dict()
    assert io.encoder.state_dict().keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(io.encoder.state_dict()[key], tensor), key
    assert io.family.name == "voxtral" and io.feature_dim() == D_MODEL and io.n_mels == 128


def test_equals_voxtral_processor_and_tower_on_speech_and_long_clips(io, tiny_voxtral_checkpoint, speech_clips,
                                                                     rng) -> None:  # fmt: skip
    _, model = tiny_voxtral_checkpoint
    # Noise clips end in 50 ms of silence, as speech does: the <= 2 frames whose STFT window straddles a
    # clip's end are then silence in Voxtral's padded features too (see contaudio.encoders.windows).
    tail = np.zeros(TAIL_SILENCE_SAMPLES, np.float32)
    clips = {**speech_clips, **{f"{s} s noise": np.concatenate([noise(rng, s * 16000, 0.05), tail]) for s in (45, 61)}}
    for name, wav in clips.items():
        _, (rows, mel), _ = io.preprocess((wav, 16000))
        with torch.inference_mode():
            (ours,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
            ref = voxtral_processor_rows(model, wav)
        assert ours.shape == ref.shape == (rows, D_MODEL) and rows == io.find_length(len(wav)), name
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, msg=name)


def test_rule_equals_rows_encode_batch_returns(io) -> None:
    ms = torch.cat([torch.arange(1, 121), torch.tensor([1499, 1500, 2999, 3000, 3001, 3002, 6000, 6001])])
    with torch.inference_mode():
        got = []
        for block in ms.split(64):
            got += [f.shape[0] for f in io.encode_batch(torch.randn(len(block), int(block.max()), 128), block)]
    assert got == whisper_rows(ms).tolist()


def test_batched_equals_one_at_a_time(io, rng) -> None:
    sizes = [1, 320, 16000, 100000, WINDOW_SAMPLES, WINDOW_SAMPLES + 161]
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = padded_batch(mels, extra=7, fill=3.0)
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            assert batched[i].shape == alone.shape == (whisper_rows(mel.shape[0]), D_MODEL)
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=0)


def test_long_clip_raises_under_the_default_policy() -> None:
    strict = ContinuousAudioIO(encoder_hf_model_tag=TINY_VOXTRAL, weights="random", dtype="float32")
    assert strict.find_length(WINDOW_SAMPLES) == 1500
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        strict.find_length(WINDOW_SAMPLES + 1)
