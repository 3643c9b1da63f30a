"""Voxtral audio tower: clips longer than 30 s against Voxtral's own processor + model, the long-clip
policy, and a bare encoder export.

Voxtral's processor pads the audio to a multiple of 30 s and encodes each window on its own, which
is contaudio's ``long_clip="windows"``: clips of several windows are checked against
``VoxtralForConditionalGeneration.get_audio_features`` on the processor's windows. The forward is
Whisper's (its clip-end effect is shown in ``test_whisper.py``); what every family shares
(loading a whole checkpoint, oracle, lengths, padded batches, FLOPs vs torch) is in
``test_families.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import TINY_VOXTRAL, assert_holds_tower, card_extractor, hf_audio_tower
from helpers.families import voxtral_rows

from contaudio import ContinuousAudioIO
from contaudio.encoders.windows import WINDOW_FRAMES, ClipTooLongError

ATOL = 1e-5  # fp32, same weights; our mel vs the extractor's differ by ~1e-6
HOP = 160
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480000 = 30 s: Voxtral's processor pads audio to a multiple of this
TAIL_SILENCE_SAMPLES = 800  # 50 ms: the frames straddling the clip's end are then silence in HF's features too
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(tiny_voxtral_checkpoint) -> ContinuousAudioIO:
    directory, _ = tiny_voxtral_checkpoint
    return ContinuousAudioIO(encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32",
                             long_clip="windows")  # fmt: skip


@pytest.mark.parametrize("seconds", [45, 61])
def test_long_clips_equal_voxtrals_processor_and_model(io, tiny_voxtral_checkpoint, rng, seconds: int) -> None:
    """Clips of two and three windows, ending in silence as speech does (see contaudio.encoders.windows)."""
    _, model = tiny_voxtral_checkpoint
    wav = np.concatenate([noise(rng, seconds * 16000, 0.05), np.zeros(TAIL_SILENCE_SAMPLES, np.float32)])
    _, (rows, mel), _ = io.preprocess((wav, 16000))
    with torch.inference_mode():
        (ours,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        ref = voxtral_rows(model, wav)
    assert ours.shape == ref.shape == (rows, io.feature_dim()) and rows == io.find_length(len(wav))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_long_clip_raises_under_the_default_policy() -> None:
    strict = ContinuousAudioIO(encoder_hf_model_tag=TINY_VOXTRAL, weights="random", dtype="float32")
    assert strict.find_length(WINDOW_SAMPLES) == 1500
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        strict.find_length(WINDOW_SAMPLES + 1)
    with pytest.raises(ClipTooLongError, match="long_clip='windows'"):
        strict.encode_batch(torch.zeros(1, WINDOW_FRAMES + 1, 128), torch.tensor([WINDOW_FRAMES + 1]))


def test_loads_a_bare_encoder_export_from_one_file(tiny_voxtral_checkpoint, tmp_path) -> None:
    """The shared suite loads the sharded full checkpoint; here a ``voxtral_encoder`` export with bare keys."""
    tower = hf_audio_tower(tiny_voxtral_checkpoint[1])
    tower.save_pretrained(tmp_path)
    card_extractor(TINY_VOXTRAL).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    io = ContinuousAudioIO(encoder_hf_model_tag=str(tmp_path), weights="pretrained", dtype="float32")
    assert io.family.name == "voxtral"
    assert_holds_tower(io, tower.state_dict())
