"""Qwen3-Omni audio tower (``thinker.audio_tower.*`` of Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner).

The mel is cut into 100-frame chunks; three ``k3 s2`` Conv2d run per chunk
(13 rows per full chunk), attention runs within windows of ``n_window_infer``
frames, then ``ln_post -> proj1 -> act -> proj2`` to ``output_dim``.

One quirk of HF's forward decides what "the" result of a clip is: the chunks of a
call are right-padded to the longest chunk *in the call*, and unlike Qwen2.5-Omni
the conv stack does not re-mask the padding between its three convs, so the padded
positions (``gelu(bias)``, not zero) leak into the last row(s) of a shorter chunk.
Every clip longer than one chunk has a full chunk, so its tail is always padded
to 100 frames; but a clip of < 100 frames (< 1 s) gives different features alone
than next to a longer clip. The one-clip-per-call result is the reference (what the
model gives a single audio, :func:`hf_forward_per_clip`), and the packed forward
(:func:`contaudio.encoders.packed.qwen3_omni_packed_forward`) keeps it in any batch
while running the layer stack once for the whole batch.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from contaudio.benchmark import qwen3_omni_encoder_flops
from contaudio.encoders.packed import qwen3_omni_packed_forward
from contaudio.encoders.qwen2_5_omni import concat_valid_frames
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.features import FeatureConfig
from contaudio.lengths import QWEN3_OMNI_CHUNK_FRAMES, qwen3_omni_rows

QWEN3_OMNI_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=300)


def check_chunking(encoder: PreTrainedModel) -> None:
    """The length rule assumes 100-frame chunks (``n_window=50``) and windows of whole chunks."""
    config = encoder.config
    if 2 * config.n_window != QWEN3_OMNI_CHUNK_FRAMES or config.n_window_infer % QWEN3_OMNI_CHUNK_FRAMES:
        raise ValueError(
            f"Qwen3-Omni tower with n_window={config.n_window}, n_window_infer={config.n_window_infer}: "
            f"contaudio's length rule needs chunks of {QWEN3_OMNI_CHUNK_FRAMES} frames "
            f"(n_window={QWEN3_OMNI_CHUNK_FRAMES // 2}) and n_window_infer a multiple of {QWEN3_OMNI_CHUNK_FRAMES}"
        )


def qwen3_omni_forward(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The packed forward (one layer stack for the whole batch), each clip as HF gives it alone."""
    check_chunking(encoder)
    return qwen3_omni_packed_forward(encoder, mel, lengths)


def hf_call(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """One call of HF's tower on a padded batch (packed as HF expects): ``[sum rows, output_dim]``."""
    check_chunking(encoder)
    lengths = lengths.to(mel.device)
    return encoder(concat_valid_frames(mel, lengths), feature_lens=lengths).last_hidden_state


def hf_forward_per_clip(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The reference: HF's forward called once per clip, as for a single audio. -> ``[sum rows, output_dim]``."""
    lengths = lengths.cpu()
    return torch.cat([hf_call(encoder, mel[i : i + 1, :m], lengths[i : i + 1]) for i, m in enumerate(lengths.tolist())])


QWEN3_OMNI = register(
    EncoderFamily(
        name="qwen3_omni",
        config_paths={
            "qwen3_omni_moe": ("thinker_config", "audio_config"),
            "qwen3_omni_moe_thinker": ("audio_config",),
            "qwen3_omni_moe_audio_encoder": (),
        },
        weight_prefixes=("thinker.audio_tower.", "audio_tower.", "model.audio_tower.", ""),
        encoder_class=Qwen3OmniMoeAudioEncoder,
        config_class=Qwen3OmniMoeAudioEncoderConfig,
        rows=qwen3_omni_rows,
        forward=qwen3_omni_forward,
        reference_forward=hf_forward_per_clip,
        default_features=QWEN3_OMNI_FEATURES,
        flops=qwen3_omni_encoder_flops,
    )
)
