"""Whisper encoder: 30 s window, length rule, long-clip policies, loading, parity with HF, features."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TINY_WHISPER,
    card_extractor,
    expected_silence,
    noise,
    padded_batch,
    save_tiny_whisper,
    silence_window,
)
from transformers import WhisperForConditionalGeneration

from contaudio import ContinuousAudioIO
from contaudio.encoders.windows import ClipTooLongError
from contaudio.lengths import WINDOW_FRAMES, mel_frames, whisper_rows

ATOL = 1e-5
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480000 = 30 s
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_whisper_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_whisper_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")


@pytest.fixture(scope="module")
def io_windows(tiny_whisper_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_whisper_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


@pytest.fixture(scope="module")
def hf_model(tiny_whisper_checkpoint) -> WhisperForConditionalGeneration:
    directory, _ = tiny_whisper_checkpoint
    return WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()


def hf_rows(hf_model, windows: list[torch.Tensor], frames: list[int]) -> torch.Tensor:
    """HF's encoder on whole 3000-frame windows ``[3000, n_mels]``; each window cut to HF's own valid length."""
    encoder = hf_model.get_encoder()
    hidden = encoder(torch.stack(windows).transpose(1, 2)).last_hidden_state
    valid = encoder._get_feat_extract_output_lengths(torch.tensor(frames))
    return torch.cat([h[:n] for h, n in zip(hidden, valid.tolist(), strict=True)])


def test_rule_equals_hf_valid_length_within_the_window(hf_model) -> None:
    ms = torch.arange(0, WINDOW_FRAMES + 1)
    assert torch.equal(whisper_rows(ms), hf_model.get_encoder()._get_feat_extract_output_lengths(ms))
    assert whisper_rows(WINDOW_FRAMES) == 1500 == hf_model.config.max_source_positions
    for m in (1, 2999, 3000, 3001, 9001):
        assert whisper_rows(m) == int(whisper_rows(torch.tensor(m)))


def test_rule_equals_rows_encode_batch_returns(io) -> None:
    """Every M in 1..160, then sparse up to the window edge."""
    ms = torch.cat([torch.arange(1, 161), torch.tensor([997, 1499, 1500, 1501, 2998, 2999, 3000])])
    with torch.inference_mode():
        got = []
        for block in ms.split(56):
            got += [f.shape[0] for f in io.encode_batch(torch.randn(len(block), int(block.max()), 80), block)]
    assert got == whisper_rows(ms).tolist()


def test_loads_only_the_encoder_from_single_file_and_sharded_checkpoints(io, tiny_whisper_checkpoint, tmp_path) -> None:
    directory, model = tiny_whisper_checkpoint
    assert (directory / "model.safetensors").is_file()
    sharded = save_tiny_whisper(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    other = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    for loaded, full in ((io, model), (other, sharded)):
        reference = full.get_encoder().state_dict()
        assert loaded.encoder.state_dict().keys() == reference.keys()
        for key, tensor in reference.items():
            assert torch.equal(loaded.encoder.state_dict()[key], tensor), key
    assert io.family.name == "whisper" and io.feature_dim() == 32 and io.n_mels == 80


def test_encode_batch_equals_hf_encoder_on_the_silence_padded_window(io, hf_model, rng) -> None:
    sizes = [161, 1600, 16000, 5 * 16000 + 77, 29 * 16000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES]
    mels = [torch.from_numpy(io.preprocess((noise(rng, n), 16000))[1][1]) for n in sizes]
    batch, lengths = padded_batch([m.numpy() for m in mels], extra=5, fill=9.0)
    with torch.inference_mode():
        ours = torch.cat(io.encode_batch(batch, lengths))
        ref = hf_rows(hf_model, [silence_window(m, expected_silence(m)) for m in mels], lengths.tolist())
    assert ours.shape == (int(whisper_rows(lengths).sum()), 32)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_whole_hf_pipeline_on_speech(io, hf_model, speech_clips) -> None:
    """Extractor (30 s max_length padding) + HF encoder vs preprocess + encode_batch, on real speech."""
    extractor = card_extractor(TINY_WHISPER)
    for name, wav in speech_clips.items():
        out = extractor(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
        frames = int(out["attention_mask"].sum())
        _, (rows, mel), _ = io.preprocess((wav, 16000))
        with torch.inference_mode():
            (ours,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
            ref = hf_rows(hf_model, [out["input_features"][0].T], [frames])
        assert mel.shape[0] == frames and ours.shape == ref.shape == (rows, 32), name
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, msg=name)


def test_batched_equals_one_at_a_time(io, rng) -> None:
    sizes = [1, 320, 4000, 16000, 48000, 100000, WINDOW_SAMPLES]
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = padded_batch(mels, extra=30, fill=-7.0)
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            assert batched[i].shape == alone.shape == (whisper_rows(mel.shape[0]), 32)
            torch.testing.assert_close(batched[i], alone, atol=ATOL, rtol=0)


LONG_SAMPLES = [WINDOW_SAMPLES + 1, WINDOW_SAMPLES + 161, 45 * 16000, 2 * WINDOW_SAMPLES, 2 * WINDOW_SAMPLES + 160]


@pytest.mark.parametrize("num_samples", LONG_SAMPLES)
def test_long_clip_raises_by_default_everywhere(io, rng, num_samples: int) -> None:
    wav = noise(rng, num_samples, 0.01)
    for call in (lambda: io.preprocess((wav, 16000)), lambda: io.find_length(num_samples),
                 lambda: io.find_length((wav, 16000)), lambda: io.find_length(torch.tensor([16000, num_samples])),
                 lambda: io.encode_batch(torch.zeros(1, mel_frames(num_samples, HOP), 80),
                                         torch.tensor([mel_frames(num_samples, HOP)]))):  # fmt: skip
        with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
            call()
    assert io.find_length(WINDOW_SAMPLES) == 1500  # the window itself is fine


@pytest.mark.parametrize("num_samples", LONG_SAMPLES)
def test_long_clip_windows_concatenates_consecutive_windows(io_windows, hf_model, rng, num_samples: int) -> None:
    _, (rows, mel), _ = io_windows.preprocess((noise(rng, num_samples, 0.05), 16000))
    mel = torch.from_numpy(mel)
    with torch.inference_mode():
        (ours,) = io_windows.encode_batch(mel[None], torch.tensor([mel.shape[0]]))
        starts = range(0, mel.shape[0], WINDOW_FRAMES)
        pieces = [mel[s : s + WINDOW_FRAMES] for s in starts]
        ref = hf_rows(hf_model, [silence_window(p, expected_silence(mel)) for p in pieces], [len(p) for p in pieces])
    assert io_windows.find_length(num_samples) == rows == ours.shape[0] == whisper_rows(mel.shape[0])
    assert rows == 1500 * (mel.shape[0] // WINDOW_FRAMES) + (mel.shape[0] % WINDOW_FRAMES - 1) // 2 + 1
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_long_and_short_clips_batch_under_windows(io_windows, rng) -> None:
    mels = [io_windows.preprocess((noise(rng, n, 0.05), 16000))[1][1] for n in (16000, 2 * WINDOW_SAMPLES + 999)]
    batch, lengths = padded_batch(mels, extra=3, fill=4.0)
    with torch.inference_mode():
        batched = io_windows.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = io_windows.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            torch.testing.assert_close(batched[i], alone, atol=ATOL, rtol=0)
    assert [f.shape[0] for f in batched] == io_windows.find_length(
        torch.tensor([16000, 2 * WINDOW_SAMPLES + 999])
    ).tolist()


EDGE_SAMPLES = [1, 160, 161, 320, 321, 16000, 16001, WINDOW_SAMPLES - 161, WINDOW_SAMPLES - 160, WINDOW_SAMPLES]


@pytest.mark.parametrize("num_samples", EDGE_SAMPLES)
def test_find_length_equals_preprocess_and_encoder_rows(io, rng, num_samples: int) -> None:
    _, (rows, mel), _ = io.preprocess((noise(rng, num_samples), 16000))
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    assert io.find_length(num_samples) == rows == feats.shape[0] == whisper_rows(mel_frames(num_samples, HOP))


def test_reference_forward_on_the_extractors_windows_is_hfs_pipeline(io, hf_model, rng) -> None:
    """reference_forward keeps the batch's frames past the clip: fed HF's extractor output it IS HF's pipeline.
    encode_batch (silence past the clip) differs only through the <= 2 frames straddling a loud clip's end."""
    wav = noise(rng, 5 * 16000 + 77)  # loud to its last sample
    extractor = card_extractor(TINY_WHISPER)
    out = extractor(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    window, frames = out["input_features"][0].T, int(out["attention_mask"].sum())
    with torch.inference_mode():
        reference = io.family.reference_forward(io.encoder, window[None], torch.tensor([frames]))
        pipeline = hf_rows(hf_model, [window], [frames])
        ours = io.encode_batch(window[None, :frames], torch.tensor([frames]))[0]
    torch.testing.assert_close(reference, pipeline, atol=ATOL, rtol=0)
    assert (ours - pipeline).abs().max() > ATOL  # the straddling frames are silence in ours
