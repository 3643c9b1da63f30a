"""Whisper encoder (``model.encoder.*`` of openai/whisper-large-v3, -small, -tiny, ...).

transformers has no encoder-only Whisper checkpoint type: the family is keyed on ``whisper``
(the whole encoder-decoder config builds the encoder), and the encoder tensors are read from
under ``model.encoder.`` (WhisperForConditionalGeneration), ``encoder.`` (WhisperModel /
WhisperForAudioClassification) or the bare keys of an encoder-only export.

The encoder takes exactly one 30 s window (3000 frames) and attends over all of it, padding
included (HF's WhisperEncoder has no attention mask): every clip is padded with the log-mel of
silence, as the extractor pads it (see :mod:`contaudio.encoders.windows`), and its
``(M - 1) // 2 + 1`` rows are kept (:func:`~contaudio.encoders.windows.whisper_rows`).

Returns: the encoder's ``last_hidden_state`` rows that hold the clip (50 Hz, ``d_model`` wide).
Oracle: HF's extractor with the waveform zero-padded to whole 30 s windows (Whisper's processor
for clips of <= 30 s; longer clips as Voxtral's processor cuts them, Whisper's own truncates),
``WhisperEncoder`` on each window, rows selected by ``_get_feat_extract_output_lengths``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers import PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

from contaudio.encoders.oracle import select_rows
from contaudio.encoders.registry import register
from contaudio.encoders.windows import WINDOW_FRAMES, WindowFamily, hf_windows, whisper_rows
from contaudio.features import FeatureConfig

__all__ = ["WHISPER_FEATURES", "Whisper", "whisper_rows"]

WHISPER_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=80, n_fft=400, hop_length=160, chunk_length=30)


@register
class Whisper(WindowFamily):
    name = "whisper"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"whisper": ()}
    weight_prefixes = ("model.encoder.", "encoder.", "")
    encoder_class = WhisperEncoder
    config_class = WhisperConfig
    default_features = WHISPER_FEATURES
    returns = "WhisperEncoder last_hidden_state rows holding the clip (50 Hz, d_model wide)"
    oracle_path = (
        "WhisperFeatureExtractor (clip zero-padded to whole 30 s windows) -> WhisperEncoder per window, "
        "rows by WhisperPreTrainedModel._get_feat_extract_output_lengths"
    )

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's encoder on each 30 s window, rows selected by Whisper's own ``_get_feat_extract_output_lengths``."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        hidden = encoder(windows).last_hidden_state  # [K, 1500, d_model]
        return select_rows(hidden, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames))
