"""Qwen2.5-Omni audio tower (``thinker.audio_tower.*`` of Qwen/Qwen2.5-Omni-7B and -3B).

The mel is cut per clip into chunks of ``2 * n_window`` (200) frames; conv1 (k3 s1) and conv2
(k3 s2) run per chunk with sinusoidal positions restarting in every chunk; attention is
block-diagonal (each chunk's 100 rows attend only to themselves); then a stride-2 average pool
over the whole clip, ``ln_post`` and ``proj`` to ``output_dim``. Attention is per chunk, so the
tower takes any length.

Returns: the rows of ``thinker.get_audio_features(...)`` for the clip (pooled, projected to the
LM width), exactly what the thinker splices into the LM.
Oracle: HF's extractor as ``Qwen2_5OmniProcessor`` calls it (``padding="max_length"``: the clip
zero-padded to 300 s; longer clips are padded just past their end instead of truncated at 300 s
as the processor would), then the thinker's ``get_audio_features`` (``Qwen2_5OmniThinkerModel``'s;
``Qwen2_5OmniThinkerForConditionalGeneration``'s before transformers 5.21) on our tower, its rows split
by HF's ``_get_feat_extract_output_lengths``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, WhisperFeatureExtractor
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, block_macs, config_value
from contaudio.encoders.oracle import extract_max_length, thinker_audio_rows, thinker_get_audio_features
from contaudio.encoders.packed import (
    WindowLayout,
    attention_kernel,
    check_lengths,
    mel_chunks,
    pool_group_starts,
    run_windowed_stack,
    to_device,
)
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
from contaudio.features import FeatureConfig
from contaudio.lengths import conv_out

CONV_STRIDE = 2  # conv2's stride: a chunk of f frames gives conv_out(f) rows
CONV_KERNEL = 3  # conv1/conv2 kernel size
POOL_STRIDE = 2  # AvgPool1d(2, stride=2) over the clip after the last layer
QWEN_OMNI_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=300)


def qwen2_5_omni_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the Qwen2.5-Omni audio tower returns for ``M`` mel frames.

    conv2 (stride 2) gives ``T = (M - 1) // 2 + 1`` rows (per 200-frame chunk, which sums
    to the same over the clip); the stride-2 average pool over the whole clip keeps
    ``(T - 2) // 2 + 1 = T // 2``: ``rows = ((M - 1) // 2 + 1) // 2``, 0 for ``M <= 2``.

    >>> [qwen2_5_omni_rows(m) for m in (1, 2, 3, 4, 5, 100, 3000, 30000)]
    [0, 0, 1, 1, 1, 25, 750, 7500]
    """
    after_conv = conv_out(mel_len, CONV_STRIDE)
    if isinstance(after_conv, torch.Tensor):
        return torch.where(mel_len >= 1, after_conv // POOL_STRIDE, torch.zeros_like(after_conv))
    return after_conv // POOL_STRIDE if mel_len >= 1 else 0


def packed_forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Qwen2.5-Omni audio tower on a padded batch, all chunks at once: ``[sum rows, output_dim]``.

    mel: ``[B, M_max, n_mels]`` (cast to the encoder's dtype); lengths: ``(B,)`` valid frames
    per clip (any device; read on CPU). Same result as ``Qwen2_5OmniAudioEncoder.forward`` on
    the concatenated valid frames: per-chunk conv1/conv2 (GELU, padding masked between them)
    + restarted sinusoidal positions, the layers with chunk-local attention (one call per layer,
    :mod:`contaudio.encoders.packed`), stride-2 average pool per clip, ln_post, proj.
    """
    lengths = check_lengths(mel, lengths)
    chunk_frames = CONV_STRIDE * encoder.n_window
    chunks, chunk_lengths = mel_chunks(mel.to(encoder.conv1.weight.dtype), lengths, chunk_frames)
    frame_mask = torch.arange(chunks.shape[2]) < chunk_lengths[:, None]  # [num_chunks, W]
    embed = F.gelu(encoder.conv1(chunks)) * to_device(frame_mask, chunks.device)[:, None, :]
    embed = F.gelu(encoder.conv2(embed)).transpose(1, 2)  # [num_chunks, L, d]
    positions = encoder.positional_embedding.positional_embedding[: embed.shape[1]]
    embed = embed + positions.unsqueeze(0).to(embed.dtype)
    window_rows = conv_out(chunk_lengths, CONV_STRIDE)  # one attention window per chunk
    layout = WindowLayout.from_window_rows(window_rows, embed.device)  # built once per batch
    hidden = layout.to_rows(embed)  # [N, d]
    kernel = attention_kernel(encoder.config, hidden.device, hidden.dtype)
    hidden = run_windowed_stack(encoder.layers, hidden, window_rows, kernel, layout)
    starts = to_device(pool_group_starts(conv_out(lengths, CONV_STRIDE), POOL_STRIDE), hidden.device)
    hidden = (hidden[starts] + hidden[starts + 1]) / POOL_STRIDE
    return encoder.proj(encoder.ln_post(hidden))


def qwen2_5_omni_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Useful matmul FLOPs of one Qwen2.5-Omni tower forward over clips of ``lengths`` mel frames.

    Valid frames/rows only (biases, norms, GELU, softmax, pooling are < 1 %). Per clip, cut into
    chunks of ``2 * n_window`` frames; for a chunk of ``f`` frames and ``r = (f - 1) // 2 + 1`` rows:
    conv1 ``2 f n_mels 3 d``, conv2 ``2 r d 3 d``, per layer ``2 r (4 d^2 + 2 d ffn) + 2 * 2 r^2 d``;
    then proj ``2 (T // 2) d output_dim`` for the clip's ``T`` rows.
    """
    d, ffn = config_value(config, "d_model"), config_value(config, "encoder_ffn_dim")
    layers, n_mels = config_value(config, "encoder_layers"), config_value(config, "num_mel_bins")
    output_dim = config_value(config, "output_dim")
    chunk_frames = CONV_STRIDE * config_value(config, "n_window")
    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        full, tail = divmod(int(length), chunk_frames)
        for frames, count in ((chunk_frames, full), (tail, int(tail > 0))):
            rows = conv_out(frames, CONV_STRIDE)
            chunk = frames * n_mels * CONV_KERNEL * d + rows * d * CONV_KERNEL * d
            chunk += layers * (block_macs(rows, d, ffn) + attention_macs(rows, d))
            macs += count * chunk
        macs += (conv_out(int(length), CONV_STRIDE) // POOL_STRIDE) * d * output_dim
    return float(FLOPS_PER_MAC * macs)


@register
class Qwen2_5Omni(EncoderFamily):
    name = "qwen2_5_omni"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "qwen2_5_omni": ("thinker_config", "audio_config"),
        "qwen2_5_omni_thinker": ("audio_config",),
        "qwen2_5_omni_audio_encoder": (),
    }
    weight_prefixes = ("thinker.audio_tower.", "thinker.model.audio_tower.", "audio_tower.", "model.audio_tower.", "")
    encoder_class = Qwen2_5OmniAudioEncoder
    config_class = Qwen2_5OmniAudioEncoderConfig
    default_features = QWEN_OMNI_FEATURES
    returns = "thinker.get_audio_features rows (pooled to 25 Hz, projected to the LM width)"
    oracle_path = (
        "WhisperFeatureExtractor(padding='max_length') as Qwen2_5OmniProcessor calls it -> "
        "the thinker's get_audio_features, split by _get_feat_extract_output_lengths"
    )

    rows = staticmethod(qwen2_5_omni_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return packed_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return qwen2_5_omni_flops(config, lengths)

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        return extract_max_length(extractor, wav)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        # HF checks the rows against its own _get_feat_extract_output_lengths
        get_audio_features = thinker_get_audio_features(modeling_qwen2_5_omni, "Qwen2_5Omni")
        return thinker_audio_rows(get_audio_features, encoder, input_features, frames)
