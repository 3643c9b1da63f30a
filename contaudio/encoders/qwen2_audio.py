"""Qwen2-Audio audio tower (``audio_tower.*`` of Qwen/Qwen2-Audio-7B and -7B-Instruct).

A Whisper-large encoder with a stride-2 average pool before its final layer norm: one 30 s
window (3000 frames) -> 750 rows of ``d_model`` (1280); the multi-modal projector to the LM
width belongs to the LM, not to the tower.

Every clip is padded to its window with the log-mel of silence (see
:mod:`contaudio.encoders.windows`). ``Qwen2AudioModel.forward`` masks the padded rows out of
attention (a bidirectional mask over the ``(M - 1) // 2 + 1`` valid conv rows), so
:func:`masked_window_forward` computes only the valid rows (packed, one pass for the batch) and
keeps the first ``T // 2`` pooled rows: HF's result at the cost of the clip, not of 30 s.

Returns: the tower's pooled rows that hold the clip (25 Hz, ``d_model`` wide, before the projector).
Oracle: HF's extractor with the waveform zero-padded to whole 30 s windows (Qwen2-Audio's
processor for clips of <= 30 s; it truncates longer ones, which are cut as Voxtral's processor
cuts them), then the tower call of ``Qwen2AudioModel.forward`` (its attention mask from
``_get_feat_extract_output_lengths`` and ``create_bidirectional_mask``), rows by that helper.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from contaudio.encoders.oracle import select_rows
from contaudio.encoders.packed import WindowLayout, attention_kernel, pool_group_starts, run_windowed_stack, to_device
from contaudio.encoders.registry import IntOrTensor, register
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_CONV_STRIDE,
    WINDOW_FRAMES,
    WindowFamily,
    check_window,
    hf_windows,
    split_into_windows,
)
from contaudio.lengths import conv_out, windowed_rows

POOL_STRIDE = 2  # AvgPool1d(2, stride=2) after the layers


def qwen2_audio_window_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows of one Qwen2-Audio window holding ``M <= 3000`` real frames.

    conv2 (stride 2) leaves ``T = (M - 1) // 2 + 1`` valid rows, the stride-2 average pool
    ``(T - 2) // 2 + 1 = T // 2``: 750 for a full window, 0 for ``M <= 2``.

    >>> [qwen2_audio_window_rows(m) for m in (0, 1, 2, 3, 4, 5, 100, 2999, 3000)]
    [0, 0, 0, 1, 1, 1, 25, 750, 750]
    """
    return conv_out(mel_len, WINDOW_CONV_STRIDE) // POOL_STRIDE


def qwen2_audio_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Qwen2-Audio tower returns for ``M`` mel frames (after its average pool).

    ``qwen2_audio_window_rows(M)`` (750 for a full 30 s window) for a clip that fits one window;
    longer clips (``long_clip="windows"``) are consecutive windows:
    ``750 * (M // 3000) + qwen2_audio_window_rows(M % 3000)``.

    >>> [qwen2_audio_rows(m) for m in (2, 3, 3000, 3001, 3003, 6000)]
    [0, 1, 750, 750, 751, 1500]
    """
    return windowed_rows(mel_len, qwen2_audio_window_rows, WINDOW_FRAMES)


def masked_window_forward(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, silence_per_window: bool = False
) -> torch.Tensor:
    """The tower on each clip's silence-padded 30 s window(s), computing only the rows that hold the clip.

    HF masks the padded rows out of attention, so a valid row never reads a padded one except through
    the two convs, which read ``2 T + 1`` frames for ``T`` valid conv rows. So: the convs run on the
    batch's first ``min(3000, 2 T_max + 1)`` frames (the rest never reaches a valid row), positions
    ``0..T-1`` are added, the layers run ONCE over the packed valid rows of every window (attention
    within each window's valid rows: exactly HF's mask), then the stride-2 average pool per window
    and the final layer norm. Equal to HF's masked forward over whole windows; a 5 s clip costs a
    sixth of its window. ``silence_per_window``: each window padded at its own silence level (see
    :func:`~contaudio.encoders.windows.split_into_windows`). Returns ``[sum rows, d_model]``.
    """
    check_window(encoder)
    windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, silence_per_window)  # [K, 3000, n_mels], [K]
    conv_rows = conv_out(frames.cpu(), WINDOW_CONV_STRIDE)  # [K], each >= 1
    width = min(WINDOW_FRAMES, WINDOW_CONV_STRIDE * int(conv_rows.max()) + 1)  # frames the valid conv rows read
    features = windows[:, :width].transpose(1, 2).to(encoder.conv1.weight.dtype)  # [K, n_mels, width]
    embed = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features)))).transpose(1, 2)  # [K, R, d]
    embed = embed + encoder.embed_positions.weight[: embed.shape[1]].to(embed.dtype)
    layout = WindowLayout.from_window_rows(conv_rows, embed.device)  # built once per batch
    hidden = layout.to_rows(embed[:, : layout.window_len])  # [N, d]: the valid rows of every window
    kernel = attention_kernel(encoder.config, hidden.device, hidden.dtype)
    hidden = run_windowed_stack(encoder.layers, hidden, conv_rows, kernel, layout)
    starts = to_device(pool_group_starts(conv_rows, POOL_STRIDE), hidden.device)
    return encoder.layer_norm((hidden[starts] + hidden[starts + 1]) / POOL_STRIDE)


@register
class Qwen2Audio(WindowFamily):
    name = "qwen2_audio"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"qwen2_audio": ("audio_config",), "qwen2_audio_encoder": ()}
    weight_prefixes = ("audio_tower.", "model.audio_tower.", "")
    encoder_class = Qwen2AudioEncoder
    config_class = Qwen2AudioEncoderConfig
    default_features = LARGE_V3_FEATURES
    returns = "audio tower rows holding the clip (pooled to 25 Hz, d_model wide, before the projector)"
    oracle_path = (
        "WhisperFeatureExtractor (clip zero-padded to whole 30 s windows) -> the tower call of "
        "Qwen2AudioModel.forward (mask from _get_feat_extract_output_lengths), rows by that helper"
    )

    rows = staticmethod(qwen2_audio_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return masked_window_forward(encoder, mel, lengths)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """As ``Qwen2AudioModel.forward``: mask from HF's helper, tower, rows by HF's output lengths."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        conv_rows, output_rows = encoder._get_feat_extract_output_lengths(window_frames)
        max_seq_len = (windows.shape[2] - 2) // 2 + 1  # HF's own expression for the conv output length
        seq_range = torch.arange(max_seq_len, device=conv_rows.device)[None, :]
        mask = create_bidirectional_mask(
            config=encoder.config,
            inputs_embeds=windows.new_zeros(windows.shape[0], max_seq_len, 1),
            attention_mask=(seq_range < conv_rows[:, None]).long(),
        )
        hidden = encoder(windows, attention_mask=mask).last_hidden_state
        return select_rows(hidden, output_rows)
