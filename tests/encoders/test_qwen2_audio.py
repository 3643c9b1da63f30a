"""Qwen2-Audio tower: the length rule, the long-clip policy, a bare encoder export, and a clip cut off loud.

Checked against HF's code on the same weights: ``_get_feat_extract_output_lengths`` for the rule;
HF's extractor (clip zero-padded to whole 30 s windows, cut as Voxtral's processor cuts them) and
``Qwen2AudioForConditionalGeneration.forward`` (which masks the tower's attention and raises if
the audio tokens disagree with its own count) for clips longer than a window; and HF's 30 s
pipeline on a clip that ends loud. What every family shares (loading a whole checkpoint, oracle,
lengths, padded batches, FLOPs vs torch) is in ``test_families.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import (
    TINY_AUDIO_TOKEN,
    TINY_QWEN2_AUDIO,
    assert_holds_tower,
    card_extractor,
    save_tiny_qwen2_audio,
)
from transformers import Qwen2AudioForConditionalGeneration

from contaudio import ContinuousAudioIO
from contaudio.encoders.qwen2_audio import qwen2_audio_rows
from contaudio.encoders.windows import WINDOW_FRAMES, ClipTooLongError

ATOL = 1e-5  # fp32, same weights; our mel vs the extractor's differ by ~1e-6
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
TEXT_TOKEN = 1
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are then silence in HF's features too
LONG_SAMPLES = [WINDOW_SAMPLES + 481, 45 * 16000, 2 * WINDOW_SAMPLES, 2 * WINDOW_SAMPLES + 320]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_qwen2_audio_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen2_audio_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32")


@pytest.fixture(scope="module")
def io_windows(tiny_qwen2_audio_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_qwen2_audio_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


@pytest.fixture(scope="module")
def hf_model(tiny_qwen2_audio_checkpoint) -> Qwen2AudioForConditionalGeneration:
    """The whole model transformers saved (same weights as ``io``)."""
    return tiny_qwen2_audio_checkpoint[1]


def hf_extract(wav: np.ndarray, **padding) -> tuple[torch.Tensor, int]:
    """HF's extractor: ``(input_features [1, n_mels, F], valid frames)``."""
    out = card_extractor(TINY_QWEN2_AUDIO)(wav, sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
                                            **padding)  # fmt: skip
    return out["input_features"], int(out["attention_mask"].sum())


def hf_model_rows(hf_model, features: torch.Tensor, frames: int) -> torch.Tensor:
    """HF's whole-model forward on each 3000-frame window of ``features [1, n_mels, k * 3000]``: ``[rows, d_model]``.

    One audio token per row HF's own ``_get_feat_extract_output_lengths`` counts (HF raises if that
    disagrees with its tower); the tower output is read at the projector's input, cut to those rows.
    """
    windows = features[0].reshape(features.shape[1], -1, WINDOW_FRAMES).transpose(0, 1)  # as Voxtral's processor
    window_frames = torch.tensor([min(WINDOW_FRAMES, frames - s) for s in range(0, frames, WINDOW_FRAMES)])
    _, rows = hf_model.model.audio_tower._get_feat_extract_output_lengths(window_frames)
    input_ids = torch.full((len(rows), int(rows.max()) + 2), TEXT_TOKEN)
    for i, count in enumerate(rows.tolist()):
        input_ids[i, 1 : 1 + count] = TINY_AUDIO_TOKEN
    captured = []
    hook = hf_model.model.multi_modal_projector.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        with torch.inference_mode():
            hf_model(input_ids=input_ids, input_features=windows,
                     feature_attention_mask=(torch.arange(WINDOW_FRAMES) < window_frames[:, None]).long())  # fmt: skip
    finally:
        hook.remove()
    (tower,) = captured  # [k, 750, d_model]
    return tower[torch.arange(tower.shape[1]) < rows[:, None]]


def ends_in_silence(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """A noise clip of ``num_samples`` whose last 50 ms are silence, as speech ends."""
    tail = np.zeros(TAIL_SILENCE_SAMPLES, np.float32)
    return np.concatenate([noise(rng, num_samples - TAIL_SILENCE_SAMPLES, 0.05), tail])


def encode(io: ContinuousAudioIO, wav: np.ndarray) -> tuple[int, torch.Tensor]:
    """preprocess + encode_batch on one clip: (preprocess's T, the rows)."""
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    with torch.inference_mode():
        (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
    return rows, feats


def test_rule_equals_hf_output_lengths(hf_model) -> None:
    """Within the window HF's own helper; past it, HF's helper summed over consecutive windows."""
    helper = hf_model.model.audio_tower._get_feat_extract_output_lengths
    ms = torch.arange(1, WINDOW_FRAMES + 1)
    assert torch.equal(qwen2_audio_rows(ms), helper(ms)[1])
    assert qwen2_audio_rows(0) == 0 and qwen2_audio_rows(WINDOW_FRAMES) == 750
    for m in (1, 2, 3, 2999, 3000, 3001, 3003, 6000, 9001):
        pieces = torch.tensor([min(WINDOW_FRAMES, m - s) for s in range(0, m, WINDOW_FRAMES)])
        assert qwen2_audio_rows(m) == int(qwen2_audio_rows(torch.tensor(m))) == int(helper(pieces)[1].sum())


def test_long_clip_raises_by_default_everywhere(io, rng) -> None:
    num_samples = WINDOW_SAMPLES + 1
    wav = noise(rng, num_samples, 0.01)
    for call in (lambda: io.preprocess((wav, 16000)), lambda: io.find_length(num_samples),
                 lambda: io.find_length(torch.tensor([num_samples, 16000])),
                 lambda: io.encode_batch(torch.zeros(1, 3001, 128), torch.tensor([3001]))):  # fmt: skip
        with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
            call()
    assert io.find_length(WINDOW_SAMPLES) == 750  # the window itself is fine


@pytest.mark.parametrize("num_samples", LONG_SAMPLES)
def test_long_clip_windows_equal_hfs_model_on_each_30s_window(io_windows, hf_model, rng, num_samples: int) -> None:
    """A clip ending in silence (as speech does) vs HF's extractor padded to whole windows and HF's model."""
    wav = ends_in_silence(rng, num_samples)
    rows, ours = encode(io_windows, wav)
    features, frames = hf_extract(wav, padding="longest", pad_to_multiple_of=WINDOW_SAMPLES, truncation=False)
    ref = hf_model_rows(hf_model, features, frames)
    assert io_windows.find_length(num_samples) == rows == ours.shape[0] == ref.shape[0]
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_a_clip_cut_off_loud_differs_from_hfs_pipeline_only_through_the_straddling_frames(io, hf_model, rng) -> None:
    """HF's 30 s pipeline computes the <= 2 frames whose STFT window straddles the clip's end from the clip;
    ours pads with silence there. The last valid conv row sees them and every row attends to it, so every
    row moves a little; with those frames set to HF's own padding value, HF gives our rows."""
    wav = noise(rng, 5 * 16000 + 77)  # loud to its last sample
    features, frames = hf_extract(wav, padding="max_length")  # Qwen2-Audio's processor: one 30 s window
    silence = features[0, :, -1:]  # the last frame sees only the zero padding
    straddling = (features[0, :, frames:] != silence).any(0).nonzero().flatten().tolist()
    assert straddling == list(range(len(straddling))) and 1 <= len(straddling) <= 2  # right after the clip
    patched = features.clone()
    patched[0, :, frames:] = silence
    rows, ours = encode(io, wav)
    pipeline = hf_model_rows(hf_model, features, frames)
    assert ours.shape == pipeline.shape == (rows, io.feature_dim())
    assert (ours - pipeline).abs().amax(1).min() > ATOL  # every row moves (measured: >= 5e-3)
    torch.testing.assert_close(ours, hf_model_rows(hf_model, patched, frames), atol=ATOL, rtol=0)


def test_loads_a_bare_encoder_export_from_one_file(tmp_path) -> None:
    """The shared suite loads the sharded full checkpoint; here a ``qwen2_audio_encoder`` export with bare keys."""
    tower = save_tiny_qwen2_audio(tmp_path, encoder_only=True, max_shard_size="10GB")
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family.name == "qwen2_audio"
    assert_holds_tower(io, tower.state_dict())
