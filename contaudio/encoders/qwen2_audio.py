"""Qwen2-Audio audio tower (``audio_tower.*`` of Qwen/Qwen2-Audio-7B and -7B-Instruct).

A Whisper-large encoder with a stride-2 average pool before its final layer
norm: one 30 s window (3000 frames) -> 750 rows of ``d_model`` (1280); the
multi-modal projector to the LM width belongs to the LM, not to the tower.

Every clip is padded to its window with the log-mel of silence (see
:mod:`contaudio.encoders.windows`) and run exactly as ``Qwen2AudioModel.forward``
runs its tower: padded positions are masked out of attention
(``create_bidirectional_mask`` over the ``(M - 1) // 2 + 1`` valid conv rows),
and the first ``T // 2`` pooled rows are kept.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from contaudio.benchmark import windowed_encoder_flops
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.encoders.whisper import check_window
from contaudio.encoders.windows import split_into_windows
from contaudio.features import FeatureConfig
from contaudio.lengths import WINDOW_FRAMES, conv_out, qwen2_audio_rows, qwen2_audio_window_rows

QWEN2_AUDIO_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=30)


def qwen2_audio_forward(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, fill: bool = True
) -> torch.Tensor:
    """HF's tower on each clip's window(s) with Qwen2AudioModel's padding mask: -> ``[sum rows, d_model]``.

    ``fill=False`` keeps the batch's frames past each clip's end (see :func:`split_into_windows`).
    """
    check_window(encoder)
    windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, fill)  # [K, 3000, n_mels], [K]
    positions = conv_out(WINDOW_FRAMES)  # 1500 rows after conv2
    conv_rows = conv_out(frames)  # [K] valid conv rows (HF: audio_feat_lengths)
    valid = torch.arange(positions, device=windows.device) < conv_rows[:, None]  # [K, 1500]
    mask = create_bidirectional_mask(
        config=encoder.config,
        inputs_embeds=windows.new_zeros(windows.shape[0], positions, 1),
        attention_mask=valid.long(),
    )
    hidden = encoder(windows.transpose(1, 2), attention_mask=mask).last_hidden_state  # [K, 750, d_model]
    rows = qwen2_audio_window_rows(frames)  # [K]
    keep = torch.arange(hidden.shape[1], device=hidden.device) < rows[:, None]  # [K, 750]
    return hidden[keep]


def qwen2_audio_forward_as_given(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The reference: HF's tower on windows holding whatever the batch holds past each clip (HF's
    extractor output padded to 30 s gives Qwen2-Audio's own pipeline)."""
    return qwen2_audio_forward(encoder, mel, lengths, fill=False)


QWEN2_AUDIO = register(
    EncoderFamily(
        name="qwen2_audio",
        config_paths={"qwen2_audio": ("audio_config",), "qwen2_audio_encoder": ()},
        weight_prefixes=("audio_tower.", "model.audio_tower.", ""),
        encoder_class=Qwen2AudioEncoder,
        config_class=Qwen2AudioEncoderConfig,
        rows=qwen2_audio_rows,
        forward=qwen2_audio_forward,
        reference_forward=qwen2_audio_forward_as_given,
        default_features=QWEN2_AUDIO_FEATURES,
        flops=windowed_encoder_flops,
        output_dim_key="d_model",
        window_frames=WINDOW_FRAMES,
    )
)
