"""GLM-ASR audio tower (``model.audio_tower.*`` of zai-org/GLM-ASR-Nano-2512).

A Whisper-large-v3-shaped encoder with rotary positions (half the head dims) instead of learned
ones and no padding mask: one 30 s window (3000 frames, 128 mels) -> conv1, conv2 (stride 2) ->
1500 rows of ``hidden_size`` (1280), full attention over the window, padding included. So every
clip is padded with the log-mel of silence, as the extractor pads it, and its
``(M - 1) // 2 + 1`` rows are kept (:func:`~contaudio.encoders.windows.whisper_rows`), as for
Whisper. ``GlmAsrModel.get_audio_features`` then merges 4 rows into one and projects them to the
LM width (12.5 Hz); that belongs to the LM side.

Long audio: GlmAsrProcessor cuts the *waveform* into consecutive 30 s pieces, extracts each one
on its own and encodes them as windows, up to ``max_audio_len`` = 655 s, i.e. 21 whole windows
(630 s); it truncates the rest with a log line. contaudio cuts the same way (the featurizer's
``waveform_window_s``, each window padded at its own silence level), encodes every window
(``long_clip="windows"``) and refuses clips over 630 s instead of cutting them.

Returns: the tower's rows that hold the clip (50 Hz, ``hidden_size`` wide, before the 4-row merge
and projector): ``1500 * (M // 3000) + (M % 3000 - 1) // 2 + 1``.
Oracle: the processor's cut and HF's extractor per piece, then ``GlmAsrModel.get_audio_features`` on
our tower (projector set aside: ``last_hidden_state``), rows by the conv lengths HF computes there
(``_get_feat_extract_output_lengths`` of Whisper's encoder; GLM-ASR inlines the same arithmetic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel
from transformers.models.glmasr.configuration_glmasr import GlmAsrEncoderConfig
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder, GlmAsrModel
from transformers.models.whisper.modeling_whisper import WhisperPreTrainedModel

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, config_value
from contaudio.encoders.oracle import ProjectorFreeHost, frame_mask, select_rows
from contaudio.encoders.registry import register
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_CONV_KERNEL,
    WINDOW_CONV_STRIDE,
    WINDOW_FRAMES,
    WindowFamily,
    hf_windows,
)
from contaudio.lengths import ceil_div, conv_out

MAX_WINDOWS = 655 // 30  # GlmAsrProcessor(max_audio_len=655) keeps int(655 // 30) = 21 whole 30 s windows
MERGE_FACTOR = 4  # get_audio_features: 4 tower rows -> one LM row (intermediate_size = 4 * hidden_size)
MLP_MATMULS = 2  # fc1, fc2


def glm_asr_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the GLM-ASR tower over clips of ``lengths`` mel frames: whole 30 s windows.

    Per window of ``W`` frames, ``R = W // 2`` rows, ``d`` wide, ``h`` heads of which ``g`` key/value
    heads: conv1 ``2 W n_mels 3 d``, conv2 ``2 R d 3 d``, per layer q/o ``2 * 2 R d^2``, k/v
    ``2 * 2 R d (d g / h)``, MLP ``2 * 2 R d ffn``, attention ``2 * 2 R^2 d``.
    """
    d, ffn = config_value(config, "hidden_size"), config_value(config, "intermediate_size")
    layers, n_mels = config_value(config, "num_hidden_layers"), config_value(config, "num_mel_bins")
    heads = config_value(config, "num_attention_heads")
    kv_heads = config_value(config, "num_key_value_heads") if _has(config, "num_key_value_heads") else heads
    rows = conv_out(WINDOW_FRAMES, WINDOW_CONV_STRIDE)
    projections = 2 * d * d + 2 * d * (d * kv_heads // heads)
    window = WINDOW_FRAMES * n_mels * WINDOW_CONV_KERNEL * d + rows * d * WINDOW_CONV_KERNEL * d
    window += layers * (rows * (projections + MLP_MATMULS * d * ffn) + attention_macs(rows, d))
    windows = int(ceil_div(torch.as_tensor(lengths), WINDOW_FRAMES).sum())
    return float(FLOPS_PER_MAC * window * windows)


def _has(config: Mapping[str, Any] | Any, key: str) -> bool:
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return value is not None


@register
class GlmAsr(WindowFamily):
    name = "glmasr"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"glmasr": ("audio_config",), "glmasr_encoder": ()}
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = GlmAsrEncoder
    config_class = GlmAsrEncoderConfig
    output_dim_key = "hidden_size"
    default_features = LARGE_V3_FEATURES
    cuts_waveform = True
    positions_key = "max_position_embeddings"  # rotary positions
    max_frames = MAX_WINDOWS * WINDOW_FRAMES
    returns = "audio tower rows holding the clip (50 Hz, hidden_size wide, before the 4-row merge and projector)"
    oracle_path = (
        "GlmAsrProcessor's 30 s waveform cut, WhisperFeatureExtractor per piece -> "
        "GlmAsrModel.get_audio_features(...).last_hidden_state per window, rows by the conv output lengths"
    )

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return glm_asr_flops(config, lengths)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        mask = frame_mask(window_frames, WINDOW_FRAMES)
        # get_audio_features regroups 4 rows into intermediate_size columns for its projector (identity here)
        width = SimpleNamespace(intermediate_size=MERGE_FACTOR * encoder.config.hidden_size)
        host = ProjectorFreeHost(encoder, SimpleNamespace(return_dict=True, audio_config=width))
        hidden = GlmAsrModel.get_audio_features(host, windows, mask).last_hidden_state
        return select_rows(hidden, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames))
