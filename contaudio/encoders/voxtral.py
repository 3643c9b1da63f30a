"""Voxtral audio encoder (``audio_tower.*`` of mistralai/Voxtral-Mini-3B-2507 and -Small-24B-2507).

A Whisper-large-v3 encoder under another name: one 30 s window (3000 frames, 128 mels) -> 1500
rows of ``d_model`` (1280), full attention over the window and no padding mask. Voxtral's
processor pads the waveform to the next multiple of 30 s and encodes each window on its own,
which is exactly our ``long_clip="windows"`` policy. So the family reuses the Whisper-style forward
and length rule unchanged (:class:`~contaudio.encoders.windows.WindowFamily`): only the HF classes,
the config path, the weight prefix and the oracle's HF method differ.

Returns: the tower's rows for the clip's own frames (``get_audio_features(...).last_hidden_state``:
50 Hz, before Voxtral's 4-row reshape and projector). Voxtral's processor hands the LM all 1500
rows of every window, the padding's included; contaudio keeps the clip's.
Oracle: HF's extractor with Voxtral's processor padding (whole 30 s windows), the windows cut as
its processor cuts them, ``VoxtralModel.get_audio_features`` on our tower (projector and reshape
set aside), rows selected by Whisper's ``_get_feat_extract_output_lengths`` (Voxtral has none).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch
from transformers import PreTrainedModel
from transformers.models.voxtral.configuration_voxtral import VoxtralEncoderConfig
from transformers.models.voxtral.modeling_voxtral import VoxtralEncoder, VoxtralModel
from transformers.models.whisper.modeling_whisper import WhisperPreTrainedModel

from contaudio.encoders.oracle import ProjectorFreeHost, select_rows
from contaudio.encoders.registry import register
from contaudio.encoders.windows import LARGE_V3_FEATURES, WINDOW_FRAMES, WindowFamily, hf_windows


@register
class Voxtral(WindowFamily):
    name = "voxtral"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"voxtral": ("audio_config",), "voxtral_encoder": ()}
    weight_prefixes = ("audio_tower.", "model.audio_tower.", "")
    encoder_class = VoxtralEncoder
    config_class = VoxtralEncoderConfig
    default_features = LARGE_V3_FEATURES
    returns = "audio tower rows holding the clip (50 Hz, before Voxtral's 4-row reshape and projector)"
    oracle_path = (
        "WhisperFeatureExtractor with VoxtralProcessor's padding (whole 30 s windows) -> "
        "VoxtralModel.get_audio_features(...).last_hidden_state per window, rows by Whisper's length helper"
    )

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        # get_audio_features reshapes to intermediate_size columns for its projector: d_model keeps the rows
        width = SimpleNamespace(intermediate_size=encoder.config.d_model)
        host = ProjectorFreeHost(encoder, SimpleNamespace(return_dict=True, audio_config=width))
        hidden = VoxtralModel.get_audio_features(host, windows).last_hidden_state
        rows = WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames)
        return select_rows(hidden, rows)
