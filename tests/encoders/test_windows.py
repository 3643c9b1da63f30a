"""Fixed-window machinery: the silence level the extractor pads with, window splitting, HF's window layout,
the window check, the long-clip policy, and the processor-driven oracle of the families whose processor cuts
the waveform (with the tiny tokenizer it is built with).

The per-family checks (rules, long clips and a clip cut off loud against HF's models) are in
``test_whisper.py``, ``test_qwen2_audio.py``, ``test_voxtral.py``, ``test_audioflamingo3.py`` and
``test_glmasr.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import TINY_QWEN_OMNI, TINY_WHISPER, card_encoder_config, card_extractor
from transformers import WhisperConfig
from transformers.models.audioflamingo3.processing_audioflamingo3 import AudioFlamingo3Processor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from contaudio import ContinuousAudioIO
from contaudio.encoders import get_family
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.encoders.windows import (
    ClipTooLongError,
    check_clip_frames,
    check_window,
    hf_windows,
    run_processor,
    silence_level,
    split_into_windows,
    window_frame_counts,
)
from contaudio.features import FeatureConfig, frames_seen, log_mel


@pytest.mark.parametrize("card", ["openai/whisper-tiny", "Qwen/Qwen2-Audio-7B"])
def test_silence_level_is_what_the_extractor_pads_with(rng, speech_clips, card: str) -> None:
    """Every frame past the clip (after the <= 2 straddling ones) of HF's 30 s output is our level."""
    extractor = card_extractor(card)
    cfg = FeatureConfig.from_dict(extractor.to_dict())
    clips = [noise(rng, n, scale) for n in (1, 161, 1600, 16000, 77777) for scale in (0.1, 1e-6)]  # 1e-6: -1.5 floor
    clips += [noise(rng, 479_000), np.zeros(8000, dtype=np.float32), *speech_clips.values()]
    for wav in clips:
        padded = extractor(wav, sampling_rate=16000, padding="max_length", return_tensors="np")["input_features"][0]
        mel = log_mel(wav, cfg)
        level = float(silence_level(mel[None], torch.tensor([mel.shape[0]]))[0])
        np.testing.assert_allclose(padded[:, frames_seen(len(wav), cfg) :], level, atol=1e-5, rtol=0)


def test_split_into_windows_cuts_consecutive_windows_and_fills_the_last() -> None:
    mel = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)  # two clips, 7 frames padded, 2 mels
    windows, frames = split_into_windows(mel, torch.tensor([7, 2]), window_frames=3)
    assert frames.tolist() == [3, 3, 1, 2]
    level_a = float(mel[0].max()) - 2.0
    level_b = float(mel[1, :2].max()) - 2.0
    torch.testing.assert_close(windows[0], mel[0, 0:3])
    torch.testing.assert_close(windows[1], mel[0, 3:6])
    torch.testing.assert_close(
        windows[2], torch.stack([mel[0, 6], torch.full((2,), level_a), torch.full((2,), level_a)])
    )
    torch.testing.assert_close(windows[3], torch.cat([mel[1, :2], torch.full((1, 2), level_b)]))


def test_policy_check_only_concerns_windowed_families() -> None:
    whisper, omni = get_family("whisper"), get_family("qwen2_5_omni")
    check_clip_frames(whisper, 3000, "raise", 100.0)
    check_clip_frames(whisper, 30001, "windows", 100.0)
    check_clip_frames(omni, 10**6, "raise", 100.0)
    check_clip_frames(whisper, torch.tensor([], dtype=torch.long), "raise", 100.0)
    with pytest.raises(ClipTooLongError, match=r"at most 3000 mel frames \(30 s\).*a clip of 3001 frames"):
        check_clip_frames(whisper, 3001, "raise", 100.0)
    with pytest.raises(ClipTooLongError, match="2 clip"):
        check_clip_frames(whisper, torch.tensor([5, 3001, 9000]), "raise", 100.0)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="long_clip must be one of"):
        ContinuousAudioIO(encoder_hf_model_tag=TINY_WHISPER, weights="random", dtype="float32", long_clip="truncate")


def test_unwindowed_family_ignores_the_policy() -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=TINY_QWEN_OMNI, weights="random", dtype="float32")
    assert io.long_clip == "raise" and io.family.window_frames is None
    assert io.find_length(400 * 16000) == 10000  # a 400 s clip: no window, no error


def test_hf_windows_cut_as_voxtrals_processor() -> None:
    """``[B, n_mels, k * W]`` -> each clip's windows in order, as VoxtralProcessor reshapes one clip's features."""
    features = torch.arange(2 * 2 * 9, dtype=torch.float32).reshape(2, 2, 9)  # two clips, 2 mels, three 3-frame windows
    windows, frames = hf_windows(features, torch.tensor([7, 2]), window_frames=3)
    expected = [f.reshape(2, -1, 3).transpose(0, 1) for f in features]  # the processor's cut of each clip alone
    torch.testing.assert_close(windows, torch.cat([expected[0], expected[1][:1]]))
    assert frames.tolist() == [3, 3, 1, 2]  # the second clip's empty windows are dropped
    assert window_frame_counts(torch.tensor([7, 2]), 3, 3).tolist() == [[3, 3, 1], [2, 0, 0]]


def test_window_check_refuses_an_encoder_of_another_window() -> None:
    config = card_encoder_config(TINY_WHISPER)
    check_window(WhisperEncoder(WhisperConfig(**config)))
    with pytest.raises(ValueError, match=r"takes 1000 mel frames \(max_source_positions=500\).*need 3000"):
        check_window(WhisperEncoder(WhisperConfig(**{**config, "max_source_positions": 500})))


def test_tiny_tokenizer_gives_each_special_token_one_id_adjacent_or_not() -> None:
    tok = tiny_tokenizer(["<sound>", "<|pad|>"])
    ids = [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<pad>", "<sound>", "<|pad|>")]
    assert ids == [0, 1, 2, 3] and tok.pad_token_id == 1
    assert tok("say<sound><sound> <|pad|>x")["input_ids"] == [0, 2, 2, 3, 0]
    with pytest.raises(ValueError, match="must be distinct"):
        tiny_tokenizer(["<sound>", "<sound>"])
    with pytest.raises(ValueError, match="differ from '<unk>' and '<pad>'"):
        tiny_tokenizer(["<pad>"])


AF3 = get_family("audioflamingo3")
SR = 16000
WINDOW_SAMPLES = 30 * SR


@pytest.fixture(scope="module")
def af3_io() -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag="contaudio/tiny-audioflamingo3", weights="random", dtype="float32",
                             long_clip="windows", returns="tower")  # fmt: skip


def test_run_processor_is_the_processors_own_cut_masks_and_prompt(af3_io) -> None:
    """30 s + 1 sample: two windows (the second holding one frame), as AudioFlamingo3Processor cuts them."""
    processor = AF3.hf_processor(af3_io.features.hf_extractor())
    assert isinstance(processor, AudioFlamingo3Processor) and processor.audio_token == "<sound>"
    audio = run_processor(processor, np.zeros(WINDOW_SAMPLES + 1, np.float32))
    assert audio.input_features.shape == (2, 128, 3000)
    assert audio.input_features_mask.sum(-1).tolist() == [3000, 1]
    assert audio.placeholders == af3_io.find_length(WINDOW_SAMPLES + 1) == 750


def test_the_oracle_does_not_follow_contaudios_cuts_waveform(af3_io, rng, monkeypatch) -> None:
    """The oracle is HF's processor: switching contaudio's own cut off leaves HF's answer unchanged."""
    wav = noise(rng, 35 * SR)
    wav[:WINDOW_SAMPLES] *= 100.0
    with torch.inference_mode():
        before = AF3.oracle(af3_io.encoder, af3_io.features.hf_extractor(), wav)
        monkeypatch.setattr(type(AF3), "cuts_waveform", False)
        after = AF3.oracle(af3_io.encoder, af3_io.features.hf_extractor(), wav)
    assert after.error is None and after.count == before.count == 875
    assert torch.equal(before.rows, after.rows)


def test_an_error_in_the_processor_is_recorded_not_hidden(af3_io, monkeypatch) -> None:
    def refuse(self, audio, **kwargs):
        raise RuntimeError("processor broke")

    monkeypatch.setattr(AudioFlamingo3Processor, "_process_audio", refuse)
    answer = AF3.oracle(af3_io.encoder, af3_io.features.hf_extractor(), np.zeros(SR, np.float32))
    assert answer.rows is None and answer.placeholders is None
    assert answer.error == "RuntimeError: processor broke"
