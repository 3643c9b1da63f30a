"""Audio Flamingo 3 audio tower (``model.audio_tower.*`` of nvidia/audio-flamingo-3-hf).

A Whisper-large-v3 encoder with Qwen2-Audio's tail: one 30 s window (3000 frames, 128 mels) ->
conv1, conv2 (stride 2) -> 1500 rows, padded rows masked out of attention, a stride-2 average
pool and a layer norm -> 750 rows of ``d_model`` (1280). So a window holding ``M`` frames gives
``((M - 1) // 2 + 1) // 2`` rows (:func:`~contaudio.encoders.qwen2_audio.qwen2_audio_window_rows`).

Long audio: AudioFlamingo3Processor cuts the *waveform* into consecutive 30 s pieces, extracts each
one on its own (its own clamp, zero-padded to 30 s) and encodes them as windows, up to
``max_audio_len`` = 600 s (20 windows); it truncates the rest with a log line. contaudio cuts the
same way (the featurizer's ``waveform_window_s``, each window's padding at its own silence level),
encodes every window (``long_clip="windows"``; the default ``"raise"`` refuses clips > 30 s), and
refuses clips over 600 s instead of cutting them.

Returns: the tower's pooled rows that hold the clip (25 Hz, ``d_model`` wide, before the projector),
window after window: ``750 * (M // 3000) + ((M % 3000 - 1) // 2 + 1) // 2`` rows, which is also the
processor's own token count (it counts on the summed frames; 3000-frame windows make both agree).
Oracle: the processor's cut and HF's extractor per piece, then ``AudioFlamingo3Model.get_audio_features``
on our tower (its projector set aside: ``last_hidden_state``), rows by the tower's own
``_get_feat_extract_output_lengths``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import PreTrainedModel
from transformers.models.audioflamingo3.configuration_audioflamingo3 import AudioFlamingo3EncoderConfig
from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder, AudioFlamingo3Model

from contaudio.encoders.oracle import ProjectorFreeHost, frame_mask, select_rows
from contaudio.encoders.qwen2_audio import masked_window_forward, qwen2_audio_rows
from contaudio.encoders.registry import register
from contaudio.encoders.windows import LARGE_V3_FEATURES, WINDOW_FRAMES, WindowFamily, hf_windows

MAX_AUDIO_S = 600  # AudioFlamingo3Processor(max_audio_len=600): 20 windows of 30 s


@register
class AudioFlamingo3(WindowFamily):
    name = "audioflamingo3"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "audioflamingo3": ("audio_config",),
        "audioflamingo3_encoder": (),
    }
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = AudioFlamingo3Encoder
    config_class = AudioFlamingo3EncoderConfig
    default_features = LARGE_V3_FEATURES
    cuts_waveform = True
    max_frames = MAX_AUDIO_S * WINDOW_FRAMES // 30
    returns = "audio tower rows holding the clip (pooled to 25 Hz, d_model wide, before the projector), per 30 s window"
    oracle_path = (
        "AudioFlamingo3Processor's 30 s waveform cut, WhisperFeatureExtractor per piece -> "
        "AudioFlamingo3Model.get_audio_features(...).last_hidden_state, rows by _get_feat_extract_output_lengths"
    )

    rows = staticmethod(qwen2_audio_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Qwen2-Audio's packed masked-window forward, each 30 s window padded at its own silence level."""
        return masked_window_forward(encoder, mel, lengths, silence_per_window=self.cuts_waveform)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        mask = frame_mask(window_frames, WINDOW_FRAMES)
        hidden = AudioFlamingo3Model.get_audio_features(ProjectorFreeHost(encoder), windows, mask).last_hidden_state
        return select_rows(hidden, encoder._get_feat_extract_output_lengths(window_frames)[1])
