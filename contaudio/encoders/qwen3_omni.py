"""Qwen3-Omni audio tower (``thinker.audio_tower.*`` of Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner).

The mel is cut into 100-frame chunks; three ``k3 s2`` Conv2d run per chunk
(13 rows per full chunk), attention runs within windows of ``n_window_infer``
frames, then ``ln_post -> proj1 -> act -> proj2`` to ``output_dim``.

One quirk of HF's forward decides how we call it: the chunks of a call are
right-padded to the longest chunk *in the call*, and unlike Qwen2.5-Omni the
conv stack does not re-mask the padding between its three convs, so the padded
positions (``gelu(bias)``, not zero) leak into the last row(s) of a shorter chunk.
Every clip longer than one chunk has a full chunk, so its tail is always padded
to 100 frames; but a clip of < 100 frames (< 1 s) gives different features alone
than next to a longer clip. The one-clip-per-call result is the reference
(what the model gives a single audio), and :func:`qwen3_omni_forward` keeps it in a
batch: clips of >= 100 frames go in one call, shorter clips in one call per
distinct length (equal lengths need no padding). All calls are HF's own forward.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

from contaudio.encoders.qwen2_5_omni import concat_valid_frames
from contaudio.encoders.registry import EncoderFamily, register
from contaudio.features import FeatureConfig
from contaudio.lengths import QWEN3_OMNI_CHUNK_FRAMES, qwen3_omni_rows

QWEN3_OMNI_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=300)


def hf_call(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """One call of HF's tower on a padded batch (packed as HF expects): ``[sum rows, output_dim]``."""
    if 2 * encoder.config.n_window != QWEN3_OMNI_CHUNK_FRAMES:
        raise ValueError(
            f"Qwen3-Omni tower with n_window={encoder.config.n_window}: contaudio's length rule "
            f"needs chunks of {QWEN3_OMNI_CHUNK_FRAMES} frames (n_window={QWEN3_OMNI_CHUNK_FRAMES // 2})"
        )
    lengths = lengths.to(mel.device)
    return encoder(concat_valid_frames(mel, lengths), feature_lens=lengths).last_hidden_state


def call_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Clip indices that can share one HF call and still get their one-clip result.

    All clips of >= 100 frames together; each distinct shorter length on its own.

    >>> [g.tolist() for g in call_groups(torch.tensor([250, 37, 100, 37, 12]))]
    [[0, 2], [4], [1, 3]]
    """
    short = lengths < QWEN3_OMNI_CHUNK_FRAMES
    groups = [(~short).nonzero().flatten()] if bool((~short).any()) else []
    groups += [(lengths == m).nonzero().flatten() for m in lengths[short].unique().tolist()]
    return groups


def qwen3_omni_forward(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """HF's forward, batch-independent: each clip gets its one-clip-per-call features. -> ``[sum rows, output_dim]``."""
    lengths = lengths.cpu()
    groups = call_groups(lengths)
    if len(groups) == 1:
        return hf_call(encoder, mel, lengths)
    per_clip: list[torch.Tensor | None] = [None] * len(lengths)
    for group in groups:
        sub = lengths[group]
        flat = hf_call(encoder, mel[group.to(mel.device), : int(sub.max())], sub)
        for index, feats in zip(group.tolist(), flat.split(qwen3_omni_rows(sub).tolist()), strict=True):
            per_clip[index] = feats
    return torch.cat(per_clip)


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
    )
)
