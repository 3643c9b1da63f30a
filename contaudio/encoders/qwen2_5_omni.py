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

The tower's rows are what the thinker feeds its LM, so ``returns="lm"`` is ``"tower"`` (``lm_view``), and its
placeholder count (:meth:`Qwen2_5Omni.hf_placeholders`) is the number of audio tokens ``Qwen2_5OmniProcessor``
itself writes into a prompt holding the clip alone: HF's processor (built for text and audio only,
:func:`~contaudio.encoders.processors.audio_only`, around the checkpoint's extractor and a tiny tokenizer), which
counts ``((M - 1) // 2 + 1 - 2) // 2 + 1`` for the ``M`` frames of its mask. A clip over 300 s is called as the
oracle's extractor call is (padded just past its end, not truncated): the processor's default would cut it to
300 s and write 7500 tokens, while contaudio (and the oracle) encode the whole clip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Qwen2_5OmniProcessor, WhisperFeatureExtractor
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, block_macs, config_value
from contaudio.encoders.oracle import (
    extract_max_length,
    padding_past_the_end,
    thinker_audio_rows,
    thinker_get_audio_features,
    thinker_hidden_states,
)
from contaudio.encoders.packed import (
    AttentionKernel,
    WindowLayout,
    attention_kernel,
    check_lengths,
    mel_chunks,
    pool_group_starts,
    run_windowed_stack,
    to_device,
    windowed_hidden_states,
)
from contaudio.encoders.processors import audio_only
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features import FeatureConfig
from contaudio.lengths import conv_out

CONV_STRIDE = 2  # conv2's stride: a chunk of f frames gives conv_out(f) rows
CONV_KERNEL = 3  # conv1/conv2 kernel size
POOL_STRIDE = 2  # AvgPool1d(2, stride=2) over the clip after the last layer
# the special tokens Qwen2_5OmniProcessor reads off its tokenizer by name (Qwen2.5-Omni's own spellings)
QWEN2_5_OMNI_TOKENS = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                       "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                       "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}  # fmt: skip
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
    stack = embed_chunks(encoder, mel, lengths)
    hidden = run_windowed_stack(encoder.layers, stack.hidden, stack.window_rows, stack.kernel, stack.layout)
    starts = to_device(pool_group_starts(conv_out(lengths, CONV_STRIDE), POOL_STRIDE), hidden.device)
    hidden = (hidden[starts] + hidden[starts + 1]) / POOL_STRIDE
    return encoder.proj(encoder.ln_post(hidden))


@dataclass(frozen=True)
class StackInput:
    """The layer stack's input for a batch: packed rows ``[N, d]``, one attention window per chunk."""

    hidden: torch.Tensor
    window_rows: torch.Tensor
    layout: WindowLayout
    kernel: AttentionKernel


def embed_chunks(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> StackInput:
    """Per-chunk conv1/conv2 (GELU, padding masked between them) + restarted sinusoidal positions, packed."""
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
    return StackInput(hidden, window_rows, layout, attention_kernel(encoder.config, hidden.device, hidden.dtype))


def hidden_forward(
    encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """The tower's hidden states ``layers`` (HF's ``output_hidden_states`` indices) on a padded batch:
    ``[len(layers), sum conv rows, d_model]``, the layers run only up to the deepest one."""
    stack = embed_chunks(encoder, mel, check_lengths(mel, lengths))
    return windowed_hidden_states(encoder.layers, stack.hidden, stack.window_rows, stack.kernel, layers, stack.layout)


def qwen2_5_omni_hidden_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows of the Qwen2.5-Omni tower's hidden states for ``M`` mel frames: conv2's ``(M - 1) // 2 + 1`` (summed
    over 200-frame chunks, the same), 0 for ``M = 0``.

    >>> [qwen2_5_omni_hidden_rows(m) for m in (0, 1, 2, 3, 200, 201, 3000)]
    [0, 1, 1, 2, 100, 101, 1500]
    """
    rows = conv_out(mel_len, CONV_STRIDE)
    if isinstance(rows, torch.Tensor):
        return torch.where(mel_len >= 1, rows, torch.zeros_like(rows))
    return rows if mel_len >= 1 else 0


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

    head_modules = ("ln_post", "proj")

    graph_stack = True  # the layers run through packed.run_windowed_stack
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

    def hf_placeholders(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> int:
        """The audio tokens ``Qwen2_5OmniProcessor`` writes into a prompt holding the clip alone
        (:func:`processor_placeholders`); this family's rows are the LM's in every mode but ``"hidden_states"``."""
        return processor_placeholders(qwen2_5_omni_processor(extractor), wav)

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        return qwen2_5_omni_hidden_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        return hidden_forward(encoder, mel, lengths, layers)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        get_audio_features = thinker_get_audio_features(modeling_qwen2_5_omni, "Qwen2_5Omni")
        return thinker_hidden_states(get_audio_features, encoder, input_features, frames, layers)


def qwen2_5_omni_processor(extractor: WhisperFeatureExtractor) -> Qwen2_5OmniProcessor:
    """HF's ``Qwen2_5OmniProcessor`` for text and audio around ``extractor`` and a tiny tokenizer holding the special
    tokens it reads by name (:data:`QWEN2_5_OMNI_TOKENS`)."""
    tokenizer = tiny_tokenizer(list(QWEN2_5_OMNI_TOKENS.values()), named=QWEN2_5_OMNI_TOKENS)
    return audio_only(Qwen2_5OmniProcessor, extractor, tokenizer)


def processor_placeholders(processor: Qwen2_5OmniProcessor, wav: np.ndarray) -> int:
    """The audio tokens ``processor`` writes into a prompt of one audio token and the clip ``wav`` (mono, at the
    extractor's rate), counted in its ``input_ids``. A clip longer than the extractor's ``n_samples`` (300 s) is
    padded just past its end instead of truncated, as :func:`~contaudio.encoders.oracle.extract_max_length` does."""
    extractor = processor.feature_extractor
    audio_kwargs = {}
    if len(wav) > extractor.n_samples:
        audio_kwargs = {"max_length": padding_past_the_end(len(wav), extractor.n_fft, extractor.hop_length),
                        "truncation": False}  # fmt: skip
    out = processor(text=processor.audio_token, audio=wav, return_tensors="pt", audio_kwargs=audio_kwargs)
    return int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)).sum())
