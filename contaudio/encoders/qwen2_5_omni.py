"""Qwen2.5-Omni audio tower (``thinker.audio_tower.*`` of Qwen/Qwen2.5-Omni-7B and -3B).

``forward`` is the packed path (one attention call per layer for the whole
batch, :mod:`contaudio.encoders.packed`); ``reference_forward`` is HF's own.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio.benchmark import encoder_flops
from contaudio.encoders.packed import qwen2_5_omni_packed_forward as packed_forward
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.features import FeatureConfig
from contaudio.lengths import qwen2_5_omni_rows

QWEN_OMNI_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=300)


def concat_valid_frames(mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, M_max, n_mels]`` padded batch -> ``[n_mels, sum(lengths)]``, HF's packed input layout."""
    valid = torch.arange(mel.shape[1], device=mel.device) < lengths.to(mel.device)[:, None]
    return mel[valid].T


def hf_forward(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's own tower forward on a padded batch: ``[sum rows, output_dim]``."""
    lengths = lengths.to(mel.device)
    return encoder(concat_valid_frames(mel, lengths), feature_lens=lengths).last_hidden_state


QWEN2_5_OMNI = register(
    EncoderFamily(
        name="qwen2_5_omni",
        config_paths={
            "qwen2_5_omni": ("thinker_config", "audio_config"),
            "qwen2_5_omni_thinker": ("audio_config",),
            "qwen2_5_omni_audio_encoder": (),
        },
        weight_prefixes=(
            "thinker.audio_tower.",
            "thinker.model.audio_tower.",
            "audio_tower.",
            "model.audio_tower.",
            "",
        ),
        encoder_class=Qwen2_5OmniAudioEncoder,
        config_class=Qwen2_5OmniAudioEncoderConfig,
        rows=qwen2_5_omni_rows,
        forward=packed_forward,
        reference_forward=hf_forward,
        default_features=QWEN_OMNI_FEATURES,
        flops=encoder_flops,
    )
)
