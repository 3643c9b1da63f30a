"""Qwen3-ASR audio tower (``model.audio_tower.*`` of Qwen/Qwen3-ASR-1.7B and -0.6B, transformers' layout).

The AuT encoder of Qwen3-Omni (:mod:`contaudio.encoders.qwen3_omni`): the mel is cut into
100-frame chunks, three ``k3 s2`` Conv2d per chunk (13 rows per full chunk), attention within
windows of ``n_window_infer`` frames, then ``ln_post``. Two differences from Qwen3-Omni's tower:
the projection to the LM width is a separate ``multi_modal_projector`` (not part of the tower),
and HF's forward pads *every* chunk to 100 frames, so a clip under 1 s is convolved at width 100
too. The frames past a clip's end inside its last chunk are zeros when the clip is alone (the
extractor pads the frame axis with 0.0); in a batched HF call they would be the next frames of
the feature tensor, so the clip alone is the reference, and :func:`qwen3_asr_forward` gives it
in any batch. The tower takes any length (long-form audio): rows grow by 13 per second.

Features: :class:`~contaudio.features.qwen3_asr.Qwen3ASRFeatures` (``max(N, 8000) // 160`` frames:
a clip under 0.5 s is zero-padded to 0.5 s by the extractor, and those 50 frames are valid).

Returns: the tower's rows for the clip alone (``ln_post`` output, 13 per second, ``d_model`` wide,
before the projector): ``f(M % 100) + 13 (M // 100)`` as for Qwen3-Omni.
Oracle: ``Qwen3ASRFeatureExtractor`` as the processor calls it (``padding=True``, no truncation) on
the clip alone, then ``Qwen3ASRModel.get_audio_features(...).last_hidden_state`` on our tower, one
clip per call; the tower returns exactly the valid rows (its own ``_post_cnn_length``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.qwen3_asr.configuration_qwen3_asr import Qwen3ASREncoderConfig
from transformers.models.qwen3_asr.feature_extraction_qwen3_asr import Qwen3ASRFeatureExtractor
from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder, Qwen3ASRModel

from contaudio.encoders.oracle import ProjectorFreeHost, extract, frame_mask
from contaudio.encoders.qwen3_omni import CHUNK_FRAMES, aut_flops, aut_layers, check_chunking, qwen3_omni_rows
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.features.qwen3_asr import Qwen3ASRFeatures
from contaudio.lengths import ceil_div

QWEN3_ASR_FEATURES = Qwen3ASRFeatures(feature_size=128, chunk_length=30)


def full_chunk_widths(lengths: torch.Tensor, clip_of_chunk: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """HF's Qwen3-ASR forward pads every chunk to ``chunk_frames``, a clip's only chunk included.

    >>> full_chunk_widths(torch.tensor([250, 37]), torch.tensor([0, 0, 0, 1]), 100).tolist()
    [100, 100, 100, 100]
    """
    return torch.full_like(clip_of_chunk, chunk_frames)


def qwen3_asr_forward(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The tower on a padded batch, each clip as HF gives it alone: ``[B, M_max, n_mels]`` -> ``[sum rows, d_model]``.

    One conv-stack call over every chunk of the batch (all 100 frames wide, zeros past each clip's
    end), the layers ONCE over the packed rows, then ``ln_post``.
    """
    return encoder.ln_post(aut_layers(encoder, mel, lengths, full_chunk_widths))


@register
class Qwen3ASR(EncoderFamily):
    name = "qwen3_asr"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"qwen3_asr": ("audio_config",), "qwen3_asr_encoder": ()}
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = Qwen3ASREncoder
    config_class = Qwen3ASREncoderConfig
    output_dim_key = "d_model"
    default_features = QWEN3_ASR_FEATURES
    returns = "audio tower rows of the clip alone (ln_post, 13 per second, d_model wide, before the projector)"
    oracle_path = (
        "Qwen3ASRFeatureExtractor(padding=True) on the clip alone -> Qwen3ASRModel.get_audio_features"
        "(...).last_hidden_state, one clip per call (the tower returns exactly its valid rows)"
    )

    rows = staticmethod(qwen3_omni_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return qwen3_asr_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return aut_flops(config, lengths, pad_short_clips=True, projection=False)

    def hf_inputs(self, extractor: Qwen3ASRFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        return extract(extractor, wav, padding=True, truncation=False)

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M_max, n_mels]`` -> ``[B, n_mels, F]`` with F a whole number of chunks and zeros past each clip
        (the extractor pads the frame axis with 0.0): each clip as HF's forward sees it alone."""
        width = int(ceil_div(mel.shape[1], CHUNK_FRAMES)) * CHUNK_FRAMES
        valid = torch.arange(width, device=mel.device) < lengths.to(mel.device)[:, None]  # [B, F]
        features = F.pad(mel, (0, 0, 0, width - mel.shape[1])).masked_fill(~valid[..., None], 0.0)
        return features.transpose(1, 2), lengths

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``Qwen3ASRModel.get_audio_features`` on our tower, one call for the batch (bench's HF column)."""
        check_chunking(encoder)
        mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
        return Qwen3ASRModel.get_audio_features(ProjectorFreeHost(encoder), input_features, mask).last_hidden_state
