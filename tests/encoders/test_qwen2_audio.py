"""Qwen2-Audio tower: 30 s window + masked attention + pool, length rule, long clips, loading, parity with HF."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TINY_AUDIO_TOKEN,
    TINY_QWEN2_AUDIO,
    card_extractor,
    expected_silence,
    noise,
    padded_batch,
    save_tiny_qwen2_audio,
    silence_window,
)
from transformers import Qwen2AudioForConditionalGeneration

from contaudio import ContinuousAudioIO
from contaudio.encoders.windows import ClipTooLongError
from contaudio.lengths import WINDOW_FRAMES, mel_frames, qwen2_audio_rows

ATOL = 1e-5
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
TEXT_TOKEN = 1
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_qwen2_audio_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen2_audio_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")


@pytest.fixture(scope="module")
def hf_model(tiny_qwen2_audio_checkpoint) -> Qwen2AudioForConditionalGeneration:
    directory, _ = tiny_qwen2_audio_checkpoint
    return Qwen2AudioForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()


def hf_audio_features(hf_model, windows: list[torch.Tensor], frames: list[int]) -> torch.Tensor:
    """Tower features as HF's own ``forward`` uses them: ``[sum rows, d_model]``.

    Runs the whole model on 3000-frame windows with ``feature_attention_mask``
    (HF builds the tower's attention mask) and one audio token per row of our
    length rule: HF raises if that count differs from its own. The tower output
    is read at the projector's input and cut with HF's own output lengths.
    """
    frames = torch.tensor(frames)
    _, rows = hf_model.model.audio_tower._get_feat_extract_output_lengths(frames)
    input_ids = torch.full((len(frames), int(qwen2_audio_rows(frames).max()) + 2), TEXT_TOKEN)
    for i, count in enumerate(qwen2_audio_rows(frames).tolist()):
        input_ids[i, 1 : 1 + count] = TINY_AUDIO_TOKEN
    feature_mask = (torch.arange(WINDOW_FRAMES) < frames[:, None]).long()
    captured = []
    hook = hf_model.model.multi_modal_projector.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        hf_model(input_ids=input_ids, input_features=torch.stack(windows).transpose(1, 2),
                 feature_attention_mask=feature_mask)  # fmt: skip
    finally:
        hook.remove()
    (tower,) = captured  # [B, 750, d_model]
    return tower[torch.arange(tower.shape[1]) < rows[:, None]]


def test_rule_equals_hf_output_lengths_within_the_window(hf_model) -> None:
    ms = torch.arange(1, WINDOW_FRAMES + 1)
    _, hf_rows = hf_model.model.audio_tower._get_feat_extract_output_lengths(ms)
    assert torch.equal(qwen2_audio_rows(ms), hf_rows)
    assert qwen2_audio_rows(0) == 0 and qwen2_audio_rows(WINDOW_FRAMES) == 750
    for m in (1, 2, 3, 2999, 3000, 3001, 3003, 9001):
        assert qwen2_audio_rows(m) == int(qwen2_audio_rows(torch.tensor(m)))


def test_rule_equals_rows_encode_batch_returns(io) -> None:
    """Every M in 1..160 (0 rows up to M = 2), then sparse up to the window edge."""
    ms = torch.cat([torch.arange(1, 161), torch.tensor([997, 1499, 1500, 1501, 2997, 2998, 2999, 3000])])
    with torch.inference_mode():
        got = []
        for block in ms.split(56):
            got += [f.shape[0] for f in io.encode_batch(torch.randn(len(block), int(block.max()), 128), block)]
    assert got == qwen2_audio_rows(ms).tolist()


def test_loads_only_the_audio_tower(io, tiny_qwen2_audio_checkpoint, tmp_path) -> None:
    """From the sharded full checkpoint, and from a bare encoder export in one file."""
    directory, model = tiny_qwen2_audio_checkpoint
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    bare = save_tiny_qwen2_audio(tmp_path, encoder_only=True, max_shard_size="10GB")
    assert (tmp_path / "model.safetensors").is_file()
    other = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    for loaded, tower in ((io, model.model.audio_tower), (other, bare)):
        reference = tower.state_dict()
        assert loaded.encoder.state_dict().keys() == reference.keys()
        for key, tensor in reference.items():
            assert torch.equal(loaded.encoder.state_dict()[key], tensor), key
    assert io.family.name == "qwen2_audio" and io.feature_dim() == 32 and io.n_mels == 128


def test_encode_batch_equals_hf_forward_on_the_silence_padded_window(io, hf_model, rng) -> None:
    sizes = [481, 1600, 16000, 5 * 16000 + 77, 29 * 16000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES]
    mels = [torch.from_numpy(io.preprocess((noise(rng, n), 16000))[1][1]) for n in sizes]
    batch, lengths = padded_batch([m.numpy() for m in mels], extra=5, fill=9.0)
    with torch.inference_mode():
        ours = torch.cat(io.encode_batch(batch, lengths))
        ref = hf_audio_features(hf_model, [silence_window(m, expected_silence(m)) for m in mels], lengths.tolist())
    assert ours.shape == (int(qwen2_audio_rows(lengths).sum()), 32)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_whole_hf_pipeline_on_speech(io, hf_model, speech_clips) -> None:
    """Extractor (30 s max_length padding) + HF's model forward vs preprocess + encode_batch, on real speech."""
    extractor = card_extractor(TINY_QWEN2_AUDIO)
    names = sorted(speech_clips)
    outs = [extractor(speech_clips[n], sampling_rate=16000, padding="max_length", return_attention_mask=True,
                      return_tensors="pt") for n in names]  # fmt: skip
    frames = [int(out["attention_mask"].sum()) for out in outs]
    processed = [io.preprocess((speech_clips[n], 16000))[1] for n in names]
    batch, lengths = padded_batch([mel for _, mel in processed])
    with torch.inference_mode():
        ours = io.encode_batch(batch, lengths)
        ref = hf_audio_features(hf_model, [out["input_features"][0].T for out in outs], frames)
    assert lengths.tolist() == frames and [f.shape[0] for f in ours] == [rows for rows, _ in processed]
    torch.testing.assert_close(torch.cat(ours), ref, atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time(io, rng) -> None:
    sizes = [1, 320, 481, 4000, 16000, 48000, 100000, WINDOW_SAMPLES]
    mels = [io.preprocess((noise(rng, n), 16000))[1][1] for n in sizes]
    batch, lengths = padded_batch(mels, extra=30, fill=-7.0)
    with torch.inference_mode():
        batched = io.encode_batch(batch, lengths)
        for i, mel in enumerate(mels):
            (alone,) = io.encode_batch(torch.from_numpy(mel)[None], lengths[i : i + 1])
            assert batched[i].shape == alone.shape == (qwen2_audio_rows(mel.shape[0]), 32)
            torch.testing.assert_close(batched[i], alone, atol=ATOL, rtol=0)


LONG_SAMPLES = [WINDOW_SAMPLES + 1, WINDOW_SAMPLES + 481, 45 * 16000, 2 * WINDOW_SAMPLES, 2 * WINDOW_SAMPLES + 320]


def test_long_clip_raises_by_default_everywhere(io, rng) -> None:
    num_samples = WINDOW_SAMPLES + 1
    wav = noise(rng, num_samples, 0.01)
    for call in (lambda: io.preprocess((wav, 16000)), lambda: io.find_length(num_samples),
                 lambda: io.find_length(torch.tensor([num_samples, 16000])),
                 lambda: io.encode_batch(torch.zeros(1, 3001, 128), torch.tensor([3001]))):  # fmt: skip
        with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
            call()


def test_long_clip_windows_concatenates_consecutive_windows(tiny_qwen2_audio_checkpoint, hf_model, rng) -> None:
    directory, _ = tiny_qwen2_audio_checkpoint
    io = ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                           long_clip="windows")  # fmt: skip
    mels = [torch.from_numpy(io.preprocess((noise(rng, n, 0.05), 16000))[1][1]) for n in LONG_SAMPLES]
    batch, lengths = padded_batch([m.numpy() for m in mels], extra=7, fill=3.0)
    with torch.inference_mode():
        ours = io.encode_batch(batch, lengths)
        windows, frames = [], []
        for mel in mels:
            pieces = [mel[s : s + WINDOW_FRAMES] for s in range(0, mel.shape[0], WINDOW_FRAMES)]
            windows += [silence_window(p, expected_silence(mel)) for p in pieces]
            frames += [len(p) for p in pieces]
        ref = hf_audio_features(hf_model, windows, frames)
    expected = [io.find_length(n) for n in LONG_SAMPLES]
    assert [f.shape[0] for f in ours] == expected == qwen2_audio_rows(lengths).tolist()
    assert expected == io.find_length(torch.tensor(LONG_SAMPLES)).tolist()
    assert [io.preprocess((noise(rng, n, 0.05), 16000))[1][0] for n in LONG_SAMPLES] == expected
    torch.testing.assert_close(torch.cat(ours), ref, atol=ATOL, rtol=0)


EDGE_SAMPLES = [1, 320, 321, 480, 481, 16000, 16001, WINDOW_SAMPLES - 321, WINDOW_SAMPLES - 320, WINDOW_SAMPLES]


@pytest.mark.parametrize("num_samples", EDGE_SAMPLES)
def test_find_length_equals_preprocess_and_encoder_rows(io, rng, num_samples: int) -> None:
    _, (rows, mel), _ = io.preprocess((noise(rng, num_samples), 16000))
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    assert io.find_length(num_samples) == rows == feats.shape[0] == qwen2_audio_rows(mel_frames(num_samples, HOP))
