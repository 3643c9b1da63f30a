"""Whisper encoder (``model.encoder.*`` of openai/whisper-large-v3, -small, -tiny, ...).

transformers has no encoder-only Whisper checkpoint type: the family is keyed on
``whisper`` (the whole encoder-decoder config builds the encoder), and the
encoder tensors are read from under ``model.encoder.`` (WhisperForConditionalGeneration),
``encoder.`` (WhisperModel / WhisperForAudioClassification) or the bare keys of an
encoder-only export.

The encoder takes exactly one 30 s window (3000 frames) and attends over all of
it, padding included (HF's WhisperEncoder has no attention mask): every clip is
padded with the log-mel of silence, as the extractor pads it (see
:mod:`contaudio.encoders.windows`), and its ``(M - 1) // 2 + 1`` rows are kept.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from contaudio.benchmark import windowed_encoder_flops
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.encoders.windows import split_into_windows
from contaudio.features import FeatureConfig
from contaudio.lengths import WINDOW_FRAMES, conv_out, whisper_rows

WHISPER_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=80, n_fft=400, hop_length=160, chunk_length=30)


def check_window(encoder: PreTrainedModel) -> None:
    """The length rules assume 1500 positions after a stride-2 conv: one 3000-frame window."""
    frames = encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if frames != WINDOW_FRAMES:
        raise ValueError(
            f"{type(encoder).__name__} takes {frames} mel frames (max_source_positions="
            f"{encoder.config.max_source_positions}); contaudio's length rules need {WINDOW_FRAMES}"
        )


def whisper_forward(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, fill: bool = True
) -> torch.Tensor:
    """HF's WhisperEncoder on each clip padded to its window(s): ``[B, M_max, n_mels]`` -> ``[sum rows, d_model]``.

    ``fill=False`` keeps the batch's frames past each clip's end (see :func:`split_into_windows`).
    """
    check_window(encoder)
    windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, fill)  # [K, 3000, n_mels], [K]
    hidden = encoder(windows.transpose(1, 2)).last_hidden_state  # [K, 1500, d_model]
    rows = conv_out(frames).to(hidden.device)  # [K]
    keep = torch.arange(hidden.shape[1], device=hidden.device) < rows[:, None]  # [K, 1500]
    return hidden[keep]


def whisper_forward_as_given(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The reference: HF's encoder on windows holding whatever the batch holds past each clip (pass HF's
    extractor output padded to whole 30 s windows and this is HF's own pipeline, row for row)."""
    return whisper_forward(encoder, mel, lengths, fill=False)


WHISPER = register(
    EncoderFamily(
        name="whisper",
        config_paths={"whisper": ()},
        weight_prefixes=("model.encoder.", "encoder.", ""),
        encoder_class=WhisperEncoder,
        config_class=WhisperConfig,
        rows=whisper_rows,
        forward=whisper_forward,
        reference_forward=whisper_forward_as_given,
        default_features=WHISPER_FEATURES,
        flops=windowed_encoder_flops,
        output_dim_key="d_model",
        window_frames=WINDOW_FRAMES,
    )
)
