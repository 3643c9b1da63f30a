"""Phi-4-multimodal audio tower (``model.embed_tokens_extend.audio_embed.encoder.*`` of Phi-4-multimodal-instruct).

``Phi4MultimodalAudioModel`` on the log-mel of :mod:`contaudio.features.phi4_multimodal` (80 bins, 100 Hz):

1. per-bin mean/variance normalisation (the ``global_mean`` / ``global_invstd`` buffers);
2. NeMo conv subsampling over (time, mel): ``Conv2d(1, C, 3, s2, p1)`` + ReLU, then twice a depthwise
   ``Conv2d(C, C, 3, s2, p1)``, a pointwise ``Conv2d(C, C, 1)`` and ReLU; time and mel shrink 8x, then
   ``Linear(C * 10, D)``: ``ceil(M / 8)`` rows of ``hidden_size`` (1024), 12.5 per second;
3. the rows run through the conformer layers in blocks of :data:`BLOCK_ROWS` rows (40 s), each block
   alone: attention within the block plus a learnt relative-position bias, and a causal depthwise conv
   that restarts (sees zeros) at the block's start. A clip of more than 500 rows has its last block
   zero-padded to 500 rows, and HF's forward lets every row of that block attend to the zero rows too
   (its boolean mask is *added* to the logits, +1 everywhere, so it masks nothing); the padding rows
   are dropped afterwards;
4. each conformer layer: half FFN, attention, conv module (GLU, causal depthwise conv, swish,
   pointwise), half FFN, LayerNorm.

Which HF result is *the* result of a clip: the processor sends one audio without a mask, and that call
is what the model gives the clip. HF's padded batch differs for every clip but the longest: the conv
subsampling reads a shorter clip's padding frames (nothing re-masks between the convs), and its rows
attend to the padding rows (the mask only lowers their logits by 1). :func:`packed_forward` gives
every clip of a padded batch exactly its one-clip result, in one pass over the batch.

Modes (``returns=``), every row for the clip alone, 12.5 per second:

- ``"lm"`` (the default, :class:`Phi4MultimodalLM`): what ``Phi4MultimodalModel`` feeds its LM at the audio
  tokens of a speech-only prompt: the tower's rows through ``Phi4MultimodalAudioEmbedding``'s speech projection
  (``up_proj_for_speech``, GELU, ``down_proj_for_speech``: the LM's ``hidden_size``, 3072), one row per
  placeholder ``Phi4MultimodalProcessor`` writes (``audio_embed_sizes``). A prompt with an image switches HF to
  the vision-speech projection, which contaudio does not build. Built from the tower and the two speech
  projections only (:class:`Phi4MultimodalSpeechEmbedding`); needs the model's config (a whole checkpoint, or a
  card's ``model_config``). Oracle: ``Phi4MultimodalAudioEmbedding.forward`` itself on those weights (the model
  has no ``get_audio_features``), placeholders from ``Phi4MultimodalProcessor`` on the clip alone.
- ``"tower"``: the tower's rows (``hidden_size``, 1024), the speech projection's input. Oracle:
  ``Phi4MultimodalFeatureExtractor`` on the clip as the processor calls it for one audio, then the tower call of
  ``Phi4MultimodalAudioEmbedding.forward`` (no mask for one clip), rows by the extractor's
  ``_compute_audio_embed_size``.
- ``"hidden_states"``: the subsampled rows (0) and each conformer layer's output (``i``), ``hidden_size`` wide.
  HF's tower records no hidden states (no ``output_hidden_states``), so the oracle reads them with forward
  hooks on HF's own modules while HF's own forward runs (:func:`hf_hidden_states`).

Long audio: neither the processor (no truncation) nor the tower (40 s blocks) has a limit; the LM's
128K-token context is the bound (~2.9 h at 12.5 rows per second). Any length is encoded, never cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.models.phi4_multimodal.configuration_phi4_multimodal import (
    Phi4MultimodalAudioConfig,
    Phi4MultimodalConfig,
)
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import (
    Phi4MultimodalAudioEmbedding,
    Phi4MultimodalAudioModel,
    Phi4MultimodalPreTrainedModel,
)

from contaudio.benchmark import FLOPS_PER_MAC, QKV_OUT_PROJECTIONS, attention_macs, config_value
from contaudio.encoders.oracle import pick_hidden_states
from contaudio.encoders.packed import (
    EAGER_IMPLEMENTATION,
    WindowLayout,
    check_lengths,
    chunk_frames_per_clip,
    equal_length_runs,
    sort_windows,
    to_device,
)
from contaudio.encoders.refusals import ExpectedRefusal
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features.phi4_multimodal import TOKEN_DOWNSAMPLE, TOKEN_RATE, Phi4MultimodalFeatures
from contaudio.lengths import ceil_div, conv_out

BLOCK_ROWS = 500  # HF's max_seq_len: the layers run on blocks of 500 rows (40 s), the last zero-padded to 500
CONV_STRIDE = 2  # each of the subsampling's strided Conv2d halves time and mel
CONV_STAGES = 3  # log2(time_reduction 8) strided Conv2d: a full one, then two depthwise + pointwise pairs
CONV_TAPS = 9  # 3 x 3 kernels
FFN_MATMULS = 3  # gate_up_proj (d -> 2 ffn) and down_proj (ffn -> d): 3 d ffn per row
GLU_HALVES = 2  # the conv module's GLU pointwise conv makes 2 x ext_pw_out_channel channels
# padded frames per subsampling call: its first activation [B, C, M / 2, 40] at C = 1024 stays ~0.7 GB (CPU, float32,
# ~82 s of audio) / ~2.7 GB (CUDA, bf16, ~11 min) whatever the batch; a longer clip runs alone, as in HF
FRAMES_PER_CONV_CALL = {"cpu": 8192, "cuda": 65536}
GRID_BLOCKS = 64  # CUDA: blocks per padded attention grid (its mask [blocks, heads, L, L] stays <= 0.5 GB in bf16)
AttentionKernel = Literal["sdpa", "eager", "grid"]


def phi4_multimodal_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the Phi-4-multimodal tower returns for ``M`` mel frames: ``rows = ceil(M / 8) = (M + 7) // 8``.

    Three ``k3 s2 p1`` convs each leave ``ceil(L / 2)`` of ``L`` rows; that is also the processor's
    ``audio_embed_sizes = ceil(ceil(M / audio_compression_rate 8) / audio_downsample_rate 1)``.

    >>> [phi4_multimodal_rows(m) for m in (0, 1, 7, 8, 9, 16, 17, 4000, 4001)]
    [0, 1, 1, 1, 2, 2, 3, 500, 501]
    >>> phi4_multimodal_rows(torch.tensor([1, 8, 9])).tolist()
    [1, 1, 2]
    """
    return ceil_div(mel_len, TOKEN_RATE)


def computed_rows(rows: IntOrTensor) -> IntOrTensor:
    """Rows the layers compute for a clip of ``R`` rows: ``R`` up to one block, else whole 500-row blocks.

    >>> [computed_rows(r) for r in (0, 1, 500, 501, 1000)]
    [0, 1, 500, 1000, 1000]
    """
    whole_blocks = ceil_div(rows, BLOCK_ROWS) * BLOCK_ROWS
    if isinstance(rows, torch.Tensor):
        return torch.where(rows > BLOCK_ROWS, whole_blocks, rows)
    return whole_blocks if rows > BLOCK_ROWS else rows


def check_config(config: Phi4MultimodalAudioConfig) -> None:
    """The length rule needs ``time_reduction`` 8; the forward needs full attention within a block."""
    if config.time_reduction != TOKEN_RATE:
        raise ValueError(
            f"Phi-4-multimodal tower with time_reduction={config.time_reduction}: contaudio's length rule "
            f"(and the processor's audio_compression_rate) needs {TOKEN_RATE}"
        )
    if config.chunk_size >= 0:
        raise ValueError(
            f"Phi-4-multimodal tower with chunk_size={config.chunk_size} (streaming chunk masks): contaudio "
            "supports chunk_size < 0 (full attention within each 40 s block), as microsoft/Phi-4-multimodal-instruct"
        )


@dataclass(frozen=True)
class BlockLayout:
    """Where a batch's rows sit once cut into the 500-row blocks the layers see.

    rows: ``(B,)`` CPU, each clip's rows (the length rule). computed: ``(B,)`` CPU, rows the layers
    compute per clip (:func:`computed_rows`). block_rows: ``(num_blocks,)`` CPU, rows per block in
    packed (clip, block) order. keep: ``(sum rows,)`` int64 on the device, where each clip's rows sit
    among the computed rows (the others are padding rows).
    """

    rows: torch.Tensor
    computed: torch.Tensor
    block_rows: torch.Tensor
    keep: torch.Tensor

    @classmethod
    def from_rows(cls, rows: torch.Tensor, device: torch.device) -> BlockLayout:
        """``rows (B,)`` CPU (each >= 1) -> the layout.

        >>> layout = BlockLayout.from_rows(torch.tensor([3, 1001]), "cpu")
        >>> layout.computed.tolist(), layout.block_rows.tolist(), layout.keep[:5].tolist()
        ([3, 1500], [3, 500, 500, 500], [0, 1, 2, 3, 4])
        """
        computed = computed_rows(rows)
        lengths, clip_of_block, _ = chunk_frames_per_clip(rows, BLOCK_ROWS)
        block_rows = torch.where(rows[clip_of_block] > BLOCK_ROWS, BLOCK_ROWS, lengths)
        keep = torch.repeat_interleave(F.pad(computed.cumsum(0)[:-1], (1, 0)), rows) + ragged_arange(rows)
        return cls(rows, computed, block_rows, to_device(keep, torch.device(device)))


def ragged_arange(counts: torch.Tensor) -> torch.Tensor:
    """``cat([arange(c) for c in counts])``.

    >>> ragged_arange(torch.tensor([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    starts = F.pad(counts.cumsum(0)[:-1], (1, 0))
    return torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts)


def conv_groups(lengths: torch.Tensor, max_frames: int) -> list[torch.Tensor]:
    """Clip indices, longest first, in groups whose padded frames (size x longest) stay within ``max_frames``
    (a longer clip goes alone).

    >>> [g.tolist() for g in conv_groups(torch.tensor([10, 300, 20, 40]), 100)]
    [[1], [3, 2], [0]]
    """
    order = torch.sort(lengths, descending=True, stable=True).indices.tolist()
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * int(lengths[groups[-1][0]]) <= max_frames:
            groups[-1].append(index)
        else:
            groups.append([index])
    return [torch.tensor(group) for group in groups]


def zero_past(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero the time steps past each clip's end: ``[B, C, T, F]`` with valid steps ``(B,)`` (CPU; nothing to do
    when every clip fills T, e.g. one clip alone)."""
    if bool((valid >= hidden.shape[2]).all()):
        return hidden
    steps = torch.arange(hidden.shape[2], device=hidden.device)
    return hidden.masked_fill((steps >= to_device(valid, hidden.device)[:, None])[:, None, :, None], 0.0)


def subsample(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Normalisation and NeMo conv subsampling of a padded batch, each clip as alone: ``[B, M, n_mels]`` ->
    ``[B, ceil(M / 8), D]``.

    Alone, each strided conv zero-pads the clip's end; here every strided conv's input is zeroed past
    the clip's valid steps (after the normalisation, where the clip alone is zero-padded).
    """
    hidden = encoder.encoder_embedding(mel).unsqueeze(1)  # [B, 1, M, n_mels]
    valid = lengths
    for module in encoder.embed.conv:
        if isinstance(module, nn.Conv2d) and module.stride[0] > 1:
            hidden = zero_past(hidden, valid)
            valid = conv_out(valid, module.stride[0])
        hidden = module(hidden)
    batch, channels, steps, freq = hidden.shape
    return encoder.embed.out(hidden.transpose(1, 2).reshape(batch, steps, channels * freq))


def embed_rows(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """The subsampled rows of every clip, packed with zero rows padding long clips to whole blocks:
    ``[sum computed, D]`` (the conv runs in groups of similar length, :func:`conv_groups`)."""
    packed = mel.new_zeros(int(layout.computed.sum()), encoder.config.hidden_size)
    offsets = F.pad(layout.computed.cumsum(0)[:-1], (1, 0))
    budget = FRAMES_PER_CONV_CALL["cuda" if mel.device.type == "cuda" else "cpu"]
    for group in conv_groups(lengths, budget):
        width = int(lengths[group].max())
        hidden = subsample(encoder, mel[:, :width].index_select(0, to_device(group, mel.device)), lengths[group])
        rows = layout.rows[group]
        valid = (torch.arange(hidden.shape[1]) < rows[:, None]).flatten().nonzero().flatten()  # in [g * T]
        destination = torch.repeat_interleave(offsets[group], rows) + ragged_arange(rows)
        source = hidden.flatten(0, 1).index_select(0, to_device(valid, hidden.device))
        packed.index_copy_(0, to_device(destination, packed.device), source)
    return packed


def attention_kernel(config: Phi4MultimodalAudioConfig, device: torch.device) -> AttentionKernel:
    """How the blocks attend (flash kernels take no additive bias, so they are never used):

    - ``"eager"`` when the encoder was built eager: HF's float32 softmax, per run of equal-length blocks;
    - ``"sdpa"`` on CPU: one unpadded SDPA call per run of equal-length blocks (measured faster there);
    - ``"grid"`` on CUDA: one masked SDPA call per :data:`GRID_BLOCKS` blocks padded to their longest.
    """
    if getattr(config, "_attn_implementation", None) == EAGER_IMPLEMENTATION:
        return "eager"
    return "grid" if device.type == "cuda" else "sdpa"


@dataclass(frozen=True)
class AttentionCall:
    """Blocks attended in one call: packed rows ``start:stop`` (of the length-sorted rows).

    mask: additive ``[1 or blocks, heads, L, L]``: the relative bias (+ 1, as HF adds its mask), ``-inf`` on
    grid padding. layout: where the rows sit in a padded ``[blocks, L]`` grid; None for ``blocks`` blocks
    of exactly ``length`` rows (a view of the packed rows).
    """

    start: int
    stop: int
    blocks: int
    length: int
    mask: torch.Tensor
    layout: WindowLayout | None


def attention_calls(block_rows: torch.Tensor, bias: torch.Tensor, kernel: AttentionKernel) -> list[AttentionCall]:
    """The attention calls of one layer over blocks ``(num_blocks,)`` (CPU, sorted longest first)."""
    if kernel != "grid":
        return [AttentionCall(start, start + count * length, count, length, bias[:, :, :length, :length], None)
                for start, count, length in equal_length_runs(block_rows)]  # fmt: skip
    calls, starts = [], F.pad(block_rows.cumsum(0), (1, 0)).tolist()
    for first in range(0, len(block_rows), GRID_BLOCKS):
        rows = block_rows[first : first + GRID_BLOCKS]
        layout = WindowLayout.from_window_rows(rows, bias.device)
        length = layout.window_len
        mask = bias[:, :, :length, :length]
        if layout.key_mask is not None:
            mask = torch.where(layout.key_mask, mask, -torch.inf)  # [blocks, heads, L, L]
        calls.append(AttentionCall(starts[first], starts[first + len(rows)], len(rows), length, mask, layout))
    return calls


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, calls: list[AttentionCall], scaling: float, kernel: str
) -> torch.Tensor:
    """Attention within blocks: packed q/k/v ``[N, heads, head_dim]`` -> ``[N, heads, head_dim]``."""
    outputs = []
    for call in calls:
        rows = [t[call.start : call.stop] for t in (q, k, v)]
        if call.layout is None:
            grid = [t.unflatten(0, (call.blocks, call.length)).transpose(1, 2) for t in rows]
        else:
            grid = call.layout.qkv_grid(*rows)  # [blocks, heads, L, head_dim] each
        if kernel == EAGER_IMPLEMENTATION:
            scores = torch.matmul(grid[0], grid[1].transpose(2, 3)) * scaling + call.mask
            out = torch.matmul(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), grid[2])
        else:
            out = F.scaled_dot_product_attention(*grid, attn_mask=call.mask, scale=scaling)
        out = out.transpose(1, 2)  # [blocks, L, heads, head_dim]
        outputs.append(out.flatten(0, 1) if call.layout is None else call.layout.to_rows(out))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


@dataclass(frozen=True)
class GappedRows:
    """The packed rows with ``gap = kernel_size - 1`` zero rows before every block, for the causal conv.

    index: ``(N,)`` int64 on the device, each row's place among the ``length`` gapped rows (a CPU count).

    >>> GappedRows.from_block_rows(torch.tensor([3, 1]), 2, "cpu").index.tolist()
    [2, 3, 4, 7]
    """

    index: torch.Tensor
    length: int
    gap: int

    @classmethod
    def from_block_rows(cls, block_rows: torch.Tensor, gap: int, device: torch.device | str) -> GappedRows:
        block_of_row = torch.repeat_interleave(torch.arange(len(block_rows)), block_rows)
        index = torch.arange(int(block_rows.sum())) + gap * (block_of_row + 1)
        return cls(to_device(index, torch.device(device)), int(index[-1]) + 1, gap)


def causal_depthwise(conv: nn.Conv1d, hidden: torch.Tensor, gapped: GappedRows) -> torch.Tensor:
    """``conv`` (depthwise, kernel k) causally within each block: packed ``[N, C]`` -> ``[C', N]``.

    HF pads each block by ``k - 1`` zeros and trims the end: row t sees rows t-k+1..t of its block.
    Here the rows are laid out with ``k - 1`` zero rows before every block (:class:`GappedRows`), so
    ONE unpadded conv over the whole batch gives every block its zero history.
    """
    rows = hidden.new_zeros(gapped.length, hidden.shape[1]).index_copy_(0, gapped.index, hidden)
    out = F.conv1d(rows.T[None], conv.weight, conv.bias, groups=conv.groups)[0]  # [C', length - gap]
    return out.index_select(1, gapped.index - gapped.gap)


def conv_module(conv: nn.Module, hidden: torch.Tensor, gapped: GappedRows) -> torch.Tensor:
    """``Phi4MultimodalAudioConvModule`` on packed rows ``[N, D]`` -> ``[N, D]``."""
    separable = conv.dw_sep_conv_1d
    gated = conv.glu(conv.layer_norm(hidden)[None])[0]  # [N, ext_pw_out_channel]
    depthwise = causal_depthwise(separable.dw_conv, gated, gapped)  # [C', N]
    out = conv.ext_pw_conv_1d(conv.act(separable.pw_conv(depthwise[None])))  # [1, D, N]
    return out[0].T


def conformer_layer(
    layer: nn.Module, hidden: torch.Tensor, calls: list[AttentionCall], gapped: GappedRows, kernel: str
) -> torch.Tensor:
    """``Phi4MultimodalAudioConformerEncoderLayer.forward`` on packed rows ``[N, D]`` (rows in block order)."""
    attn = layer.self_attn
    heads = (hidden.shape[0], -1, attn.head_dim)
    residual = hidden + 0.5 * layer.feed_forward_in(hidden)
    normed = layer.layer_norm_att(residual)
    q, k, v = (proj(normed).view(heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    hidden = residual + attn.o_proj(attend(q, k, v, calls, attn.scaling, kernel).flatten(1))
    hidden = hidden + conv_module(layer.conv, hidden, gapped)
    hidden = hidden + 0.5 * layer.feed_forward_out(hidden)
    return layer.layer_norm(hidden)


def stack_states(
    encoder: nn.Module, hidden: torch.Tensor, block_rows: torch.Tensor, states: tuple[int, ...]
) -> list[torch.Tensor]:
    """The conformer layers on packed rows ``[N, D]`` cut into blocks ``(num_blocks,)`` (CPU), each block alone:
    the hidden states ``states`` (0: the layers' input, ``i``: layer ``i``'s output), ``[N, D]`` each, the layers
    run only up to the deepest one asked for.

    Blocks are put in length order (everything but attention and the conv is row-wise), so attention
    is one call per distinct block length (CPU) or per grid of similar lengths (CUDA, :func:`attention_kernel`);
    the relative bias is computed once, for the longest block.
    """
    index = None
    if len(block_rows.unique()) > 1:
        block_rows, index = sort_windows(block_rows)
        hidden = hidden.index_select(0, to_device(index, hidden.device))
    recorded = {0: hidden}
    deepest = max(states)
    if deepest > 0:
        gapped = GappedRows.from_block_rows(block_rows, encoder.config.kernel_size - 1, hidden.device)
        longest = int(block_rows.max())
        # HF adds its boolean mask (all True: nothing is masked) to the bias: + 1, rounded in the weights' dtype
        bias = encoder.relative_attention_bias_layer(hidden.new_empty(1, longest, 0)) + 1
        kernel = attention_kernel(encoder.config, hidden.device)
        calls = attention_calls(block_rows, bias, kernel)
        for depth, layer in enumerate(encoder.encoders[:deepest], start=1):
            hidden = conformer_layer(layer, hidden, calls, gapped, kernel)
            recorded[depth] = hidden
    picked = [recorded[state] for state in states]
    if index is None:
        return picked
    unsort = to_device(torch.argsort(index), hidden.device)
    return [state.index_select(0, unsort) for state in picked]


def run_blocks(encoder: nn.Module, hidden: torch.Tensor, block_rows: torch.Tensor) -> torch.Tensor:
    """Every conformer layer on packed rows ``[N, D]`` in blocks ``(num_blocks,)`` (:func:`stack_states`)."""
    return stack_states(encoder, hidden, block_rows, (len(encoder.encoders),))[0]


def packed_forward(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Phi-4-multimodal tower on a padded batch, every clip as HF's one-clip call gives it: ``[sum rows, D]``.

    mel: ``[B, M_max, n_mels]``; lengths: ``(B,)`` valid frames (any device; read on CPU). The
    subsampling runs per group of similar length with the padding re-zeroed before each strided conv
    (:func:`subsample`); then the layers run ONCE over the packed rows of the whole batch, in 500-row
    blocks, long clips padded to whole blocks with zero rows as HF pads them (:class:`BlockLayout`).
    """
    return packed_states(encoder, mel, lengths, (len(encoder.encoders),))[0]


def packed_states(
    encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, states: tuple[int, ...]
) -> list[torch.Tensor]:
    """:func:`packed_forward` keeping the hidden states ``states`` (0: the subsampled rows the layers take, ``i``:
    layer ``i``'s output), the layers run only up to the deepest: ``[sum rows, D]`` each."""
    lengths = check_lengths(mel, lengths)
    check_config(encoder.config)
    layout = BlockLayout.from_rows(phi4_multimodal_rows(lengths), mel.device)
    hidden = embed_rows(encoder, mel, lengths, layout)
    return [state.index_select(0, layout.keep) for state in stack_states(encoder, hidden, layout.block_rows, states)]


def phi4_multimodal_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the Phi-4-multimodal tower over clips of ``lengths`` mel frames, one clip per call.

    Subsampling of ``M`` frames (``C`` channels, ``T_i x F_i`` outputs of stage i): ``9 T1 F1 C`` +
    twice ``9 T_i F_i C`` (depthwise) ``+ T_i F_i C^2`` (pointwise), then ``T3 (C F3) d``. The layers
    see ``R' = computed_rows(ceil(M / 8))`` rows in blocks of ``r <= 500``; per layer and row:
    ``6 d ffn`` (two FFNs) ``+ 4 d^2`` (q, k, v, o) ``+ 2 d E`` (GLU) ``+ d E`` (last pointwise); per
    block of ``r`` rows: ``(r + k - 1) (k d m + d m S)`` (HF's depthwise and pointwise convs also run on
    the ``k - 1`` rows it trims) and ``2 r^2 d`` of attention. ``m`` = depthwise_multiplier,
    ``E`` = ext_pw_out_channel, ``S`` = depthwise_separable_out_channel, ``k`` = kernel_size.
    """
    d, ffn, layers = (config_value(config, key) for key in ("hidden_size", "intermediate_size", "num_blocks"))
    channels, freq = config_value(config, "nemo_conv_channels"), config_value(config, "input_size")
    ext, separable = config_value(config, "ext_pw_out_channel"), config_value(config, "depthwise_separable_out_channel")
    multiplier, kernel = config_value(config, "depthwise_multiplier"), config_value(config, "kernel_size")
    per_row = 2 * FFN_MATMULS * d * ffn + QKV_OUT_PROJECTIONS * d * d + GLU_HALVES * d * ext + d * ext
    per_padded_row = kernel * d * multiplier + d * multiplier * separable
    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        steps, bins = length, freq
        for stage in range(CONV_STAGES):
            steps, bins = conv_out(steps, CONV_STRIDE), conv_out(bins, CONV_STRIDE)
            macs += steps * bins * channels * (CONV_TAPS if stage == 0 else CONV_TAPS + channels)
        macs += steps * channels * bins * d
        rows = computed_rows(phi4_multimodal_rows(length))
        full, rest = divmod(rows, BLOCK_ROWS)
        blocks = [BLOCK_ROWS] * full + ([rest] if rest else [])
        macs += layers * sum(r * per_row + (r + kernel - 1) * per_padded_row + attention_macs(r, d) for r in blocks)
    return float(FLOPS_PER_MAC * macs)


def phi4_multimodal_lm_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Audio placeholder tokens ``Phi4MultimodalProcessor`` writes for a clip of ``M`` mel frames, one per row the
    model puts there: its extractor's ``audio_embed_sizes = ceil(ceil(M / 8) / audio_downsample_rate)`` with
    ``audio_downsample_rate`` 1, i.e. the tower's ``ceil(M / 8)`` rows, each through the speech projection.

    >>> [phi4_multimodal_lm_rows(m) for m in (0, 1, 8, 9, 800, 4001)]
    [0, 1, 1, 2, 100, 501]
    """
    return ceil_div(phi4_multimodal_rows(mel_len), TOKEN_DOWNSAMPLE)


def speech_projection(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """``Phi4MultimodalAudioEmbedding``'s speech projection of tower rows ``[N, d_audio]`` -> ``[N, hidden_size]``:
    ``up_proj_for_speech``, exact GELU, ``down_proj_for_speech``, then the module's dropout (``embd_pdrop``, which
    HF applies to the merged embeddings; 0 in the released checkpoint)."""
    return module.drop(module.down_proj_for_speech(F.gelu(module.up_proj_for_speech(rows))))


def phi4_multimodal_lm_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the tower (:func:`phi4_multimodal_flops` on ``audio_config``) plus the speech projection of
    each clip's ``ceil(M / 8)`` rows: ``d_audio x H`` (up) and ``H x H`` (down), ``H`` the LM's ``hidden_size``."""
    audio = config["audio_config"] if isinstance(config, Mapping) else config.audio_config
    width, d_audio = config_value(config, "hidden_size"), config_value(audio, "hidden_size")
    rows = sum(phi4_multimodal_lm_rows(int(m)) for m in torch.as_tensor(lengths).tolist())
    return phi4_multimodal_flops(audio, lengths) + FLOPS_PER_MAC * rows * (d_audio * width + width * width)


@lru_cache(maxsize=1)
def hf_token_counter() -> Phi4MultimodalFeatureExtractor:
    """HF's extractor with its defaults (the rates :class:`Phi4MultimodalFeatures` accepts): its
    ``_compute_audio_embed_size`` is HF's own count of a clip's audio tokens (what its ``__call__`` returns as
    ``audio_embed_sizes``, from which the processor writes the placeholders)."""
    return Phi4MultimodalFeatureExtractor()


def hf_tower_call(encoder: nn.Module, input_features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The tower call of ``Phi4MultimodalAudioEmbedding.forward`` with the processor's mask (none for one clip):
    ``[B, F, n_mels]``, valid frames ``[B]`` -> its output ``[B, ceil(F / 8), D]`` and each clip's
    ``audio_embed_sizes`` (the rows that method keeps)."""
    check_config(encoder.config)
    frames = frames.to(input_features.device)
    steps = torch.arange(input_features.shape[1], device=input_features.device)
    mask = None if len(frames) == 1 else steps < frames[:, None]
    return encoder(input_features, mask), hf_token_counter()._compute_audio_embed_size(frames).tolist()


def hf_hidden_states(
    encoder: nn.Module, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """HF's tower call (:func:`hf_tower_call`) recording its hidden states: ``[len(layers), sum rows, D]``.

    ``Phi4MultimodalAudioModel`` records none (its forward returns a tensor; no ``output_hidden_states``, no
    ``_can_record_outputs``, in transformers 5.25 as in 5.14.1), so forward hooks on HF's own modules read them
    while HF's own forward runs: hidden state 0 is the subsampling's output (``embed``: the rows the first layer
    takes, before HF cuts a long clip into 500-row blocks), hidden state ``i`` layer ``i``'s output, its blocks put
    back in a row and cut to the clip's rows as HF does with the last layer's output.
    """
    captured: dict[int, torch.Tensor] = {}
    hooks = [encoder.embed.register_forward_hook(lambda _m, _a, out: captured.__setitem__(0, out[0]))]
    for depth, layer in enumerate(encoder.encoders, start=1):
        hooks.append(layer.register_forward_hook(lambda _m, _a, out, depth=depth: captured.__setitem__(depth, out)))
    try:
        _, sizes = hf_tower_call(encoder, input_features, frames)
    finally:
        for hook in hooks:
            hook.remove()
    batch, rows, width = captured[0].shape
    states = tuple(captured[i].reshape(batch, -1, width)[:, :rows] for i in range(len(captured)))
    picked = pick_hidden_states(states, layers, len(encoder.encoders))  # [L, B, rows, D]
    return torch.cat([picked[:, i, :size] for i, size in enumerate(sizes)], dim=1)


@register
class Phi4Multimodal(EncoderFamily):
    name = "phi4_multimodal"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "phi4_multimodal": ("audio_config",),
        "phi4_multimodal_audio": (),
    }
    weight_prefixes = (
        "model.embed_tokens_extend.audio_embed.encoder.",
        "embed_tokens_extend.audio_embed.encoder.",
        "audio_embed.encoder.",
        "",
    )
    encoder_class = Phi4MultimodalAudioModel
    config_class = Phi4MultimodalAudioConfig
    default_features = Phi4MultimodalFeatures()
    output_dim_key: ClassVar[str] = "hidden_size"
    returns = (
        "Phi4MultimodalAudioModel rows of the clip alone (12.5 per second, hidden_size wide): the speech "
        "projector's input, one row per audio token (audio_embed_sizes)"
    )
    oracle_path = (
        "Phi4MultimodalFeatureExtractor (one audio, as the processor sends it), then the tower call of "
        "Phi4MultimodalAudioEmbedding.forward (no mask for one clip), rows by _compute_audio_embed_size"
    )
    num_layers_key: ClassVar[str] = "num_blocks"
    hidden_dim_key: ClassVar[str] = "hidden_size"
    layers_attr: ClassVar[str] = "encoders"
    head_modules: ClassVar[tuple[str, ...]] = ()  # the last conformer layer's output is the tower's

    expected_refusals = (
        ExpectedRefusal(
            r"RuntimeError: maximum size for tensor at dimension 1 is \d+ but size is \d+",
            "HF's Phi4MultimodalFeatureExtractor unfolds the clip into n_fft (400)-sample windows and raises for a "
            "clip shorter than one (0 frames); contaudio gives such a clip 0 rows",
            frames=range(0, 1),
        ),
    )
    min_oracle_share = 0.5  # the checks mix one 1-3 frame clip into each small batch
    rows = staticmethod(phi4_multimodal_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return packed_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return phi4_multimodal_flops(config, lengths)

    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """``audio_input_features [1, F, n_mels]`` (time-major) of one audio, and its F frames (all valid)."""
        out = extractor([wav], sampling_rate=extractor.sampling_rate, return_tensors="pt")
        features = out["audio_input_features"]
        return features, features.shape[1]

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's tower takes contaudio's layout as it is: ``[B, M_max, n_mels]`` and valid frames ``[B]``."""
        return mel, lengths

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The tower call of ``Phi4MultimodalAudioEmbedding.forward``, with the processor's mask (none for one
        clip), each clip's first ``audio_embed_sizes`` rows as that method keeps them."""
        hidden, sizes = hf_tower_call(encoder, input_features, frames)  # [B, ceil(F / 8), D]
        return torch.cat([hidden[i, :size] for i, size in enumerate(sizes)])

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Every hidden state has the tower's ``ceil(M / 8)`` rows (the layers keep the subsampled length)."""
        return phi4_multimodal_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        return torch.stack(packed_states(encoder, mel, lengths, layers))

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        return hf_hidden_states(encoder, input_features, frames, layers)


# ------------------------------------------------------------------------------------------------ returns="lm"
LM_MODEL_TYPE = "phi4_multimodal"  # the whole model's config.json model_type (the tower's: phi4_multimodal_audio)
# the audio embedding's parts the speech path reads, under the checkpoint's names (up/down_proj_for_vision_speech,
# used with an image in the prompt, are never read)
SPEECH_PARTS = ("encoder.", "up_proj_for_speech.", "down_proj_for_speech.")
AUDIO_EMBED_PREFIXES = (
    "model.embed_tokens_extend.audio_embed.",  # Phi4MultimodalForCausalLM (the hub's transformers-format layout)
    "embed_tokens_extend.audio_embed.",  # a Phi4MultimodalModel saved alone
)
SPEECH_MODE = "speech"  # audio_projection_mode of a prompt without an image
IMAGE_TOKEN = "<|endoftext10|>"  # the converted tokenizer's image_token (convert_phi4_multimodal_weights_to_hf.py)
AUDIO_TOKEN = "<|endoftext11|>"  # its audio_token (id 200011 in the real vocabulary, the config's audio_token_id)
PROMPT_TEXT_ID = 0  # a text token around the audio in the oracle's prompt (any id but audio_token_id)


class Phi4MultimodalSpeechEmbedding(Phi4MultimodalPreTrainedModel):
    """The speech half of ``Phi4MultimodalAudioEmbedding`` (``model.embed_tokens_extend.audio_embed``), under the
    checkpoint's own names: the tower ``encoder``, ``up_proj_for_speech``, ``down_proj_for_speech`` and the dropout
    ``drop``, built as HF's ``__init__`` builds them from the whole ``Phi4MultimodalConfig``. The vision-speech
    projections (for prompts holding an image) and the language model are never built.

    It holds every attribute ``Phi4MultimodalAudioEmbedding.forward`` reads on the speech path, so HF's own
    method runs on it as it is (the oracle).
    """

    def __init__(self, config: Phi4MultimodalConfig) -> None:
        super().__init__(config)
        audio = config.audio_config
        self.drop = nn.Dropout(config.embd_pdrop)
        self.encoder = Phi4MultimodalAudioModel._from_config(audio)
        self.up_proj_for_speech = nn.Linear(audio.hidden_size * audio.downsample_rate, config.hidden_size)
        self.down_proj_for_speech = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()


def check_speech_config(module: nn.Module) -> None:
    """HF's speech path feeds the tower's ``hidden_size`` rows to ``up_proj_for_speech``, which takes
    ``hidden_size * downsample_rate``: only ``downsample_rate`` 1 runs (every released checkpoint)."""
    audio = module.config.audio_config
    if audio.downsample_rate != TOKEN_DOWNSAMPLE:
        raise ValueError(
            f"Phi-4-multimodal audio_config.downsample_rate={audio.downsample_rate}: HF's speech projection then "
            f"expects {audio.hidden_size * audio.downsample_rate}-wide rows but the tower gives {audio.hidden_size}; "
            f"contaudio supports downsample_rate={TOKEN_DOWNSAMPLE}, as microsoft/Phi-4-multimodal-instruct"
        )
    check_config(module.encoder.config)


def named_tokenizer() -> PreTrainedTokenizerFast:
    """A :func:`~contaudio.encoders.tokenizers.tiny_tokenizer` that also names its ``image_token`` and
    ``audio_token``, as the converted checkpoint's tokenizer does (``Phi4MultimodalProcessor`` reads both)."""
    tiny = tiny_tokenizer([IMAGE_TOKEN, AUDIO_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tiny.backend_tokenizer,
        unk_token=tiny.unk_token,
        pad_token=tiny.pad_token,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "audio_token": AUDIO_TOKEN},
    )


def hf_processor(extractor: FeatureExtractionMixin) -> Phi4MultimodalProcessor:
    """``Phi4MultimodalProcessor`` around the checkpoint's extractor and :func:`named_tokenizer`.

    Its image processor (``Phi4MultimodalImageProcessor`` needs torchvision in transformers 5.x) is a bare
    ``ImageProcessingMixin``: the processor checks its type only, and a prompt without an image never calls it.
    """
    return Phi4MultimodalProcessor(ImageProcessingMixin(), extractor, named_tokenizer())


def hf_placeholder_count(extractor: FeatureExtractionMixin, wav: np.ndarray) -> int:
    """The audio tokens ``Phi4MultimodalProcessor`` puts in the prompt ``<|endoftext11|>`` holding ``wav`` alone."""
    processor = hf_processor(extractor)
    out = processor(text=processor.audio_token, audio=[wav], sampling_rate=extractor.sampling_rate)
    return int((torch.as_tensor(out["input_ids"]) == processor.audio_token_id).sum())


def hf_speech_embeds(module: nn.Module, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``Phi4MultimodalAudioEmbedding.forward`` (speech mode) on ``module``: what ``Phi4MultimodalModel`` feeds its
    LM at the audio tokens of a speech-only prompt, ``[sum rows, hidden_size]``.

    The prompt is one text token, then each clip's ``audio_embed_sizes`` audio tokens (the config's
    ``audio_token_id``), then one text token; ``inputs_embeds`` are zeros. HF's method runs the tower with the
    processor's mask (none for one clip), projects, keeps each clip's ``audio_embed_sizes`` rows and writes them at
    the audio tokens (``index_put``, which raises when the rows and the tokens differ in number); the rows at the
    audio tokens are returned.
    """
    check_speech_config(module)
    frames = frames.to(input_features.device)
    sizes = hf_token_counter()._compute_audio_embed_size(frames)
    audio_id = module.config.audio_config.audio_token_id
    tokens = torch.full((int(sizes.sum()),), audio_id)
    input_ids = F.pad(tokens, (1, 1), value=PROMPT_TEXT_ID)[None].to(input_features.device)
    inputs_embeds = input_features.new_zeros(*input_ids.shape, module.config.hidden_size)
    steps = torch.arange(input_features.shape[1], device=input_features.device)
    mask = None if len(frames) == 1 else steps < frames[:, None]
    embeds = Phi4MultimodalAudioEmbedding.forward(
        module, input_ids, inputs_embeds, input_features, audio_embed_sizes=sizes, audio_attention_mask=mask,
        audio_projection_mode=SPEECH_MODE,
    )  # fmt: skip
    return embeds[input_ids == audio_id]


class Phi4MultimodalLM(Phi4Multimodal):
    """``returns="lm"``: the rows ``Phi4MultimodalModel`` feeds its LM at the audio tokens of a speech-only prompt:
    the tower's rows through ``Phi4MultimodalAudioEmbedding``'s speech projection (``audio_projection_mode="speech"``;
    a prompt with an image uses the vision-speech projection instead, which contaudio does not build).

    Phi-4-multimodal has no ``get_audio_features``: the oracle is ``Phi4MultimodalAudioEmbedding.forward``
    itself, HF's embedding of a prompt, run on :class:`Phi4MultimodalSpeechEmbedding`.
    """

    mode = "lm"
    returns = (
        "Phi4MultimodalAudioEmbedding rows at the audio tokens of a speech-only prompt (tower, up_proj_for_speech, "
        "GELU, down_proj_for_speech; 12.5 per second, the LM's hidden_size wide), one per placeholder"
    )
    oracle_path = (
        "Phi4MultimodalFeatureExtractor (one audio, as the processor sends it), then "
        "Phi4MultimodalAudioEmbedding.forward (speech mode, no mask for one clip) on a prompt of "
        "_compute_audio_embed_size audio tokens; placeholders from Phi4MultimodalProcessor on the clip alone"
    )
    config_class = Phi4MultimodalConfig
    encoder_class = Phi4MultimodalSpeechEmbedding
    weight_prefixes = tuple({prefix + part: part for part in SPEECH_PARTS} for prefix in AUDIO_EMBED_PREFIXES)

    rows = staticmethod(phi4_multimodal_lm_rows)

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The whole model's config with the tower's config as its ``audio_config``."""
        if model_config is None:
            raise ValueError(
                "this Phi-4-multimodal source has no model_config: returns='lm' needs the model's config (the LM "
                "width hidden_size the speech projection maps to, embd_pdrop), from a whole checkpoint's config.json "
                "or a card's model_config; use returns='tower' for the tower's rows"
            )
        if model_config.get("model_type") != LM_MODEL_TYPE:
            raise ValueError(
                f"returns='lm' needs a whole Phi-4-multimodal checkpoint (config.json model_type {LM_MODEL_TYPE!r}), "
                f"got model_type {model_config.get('model_type')!r}: a bare audio-tower export holds no speech "
                "projection; use returns='tower' for the tower's rows"
            )
        return {**model_config, "audio_config": dict(encoder_config)}

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The packed tower forward on ``encoder.encoder``, then the speech projection of every row."""
        check_speech_config(encoder)
        return speech_projection(encoder, packed_forward(encoder.encoder, mel, lengths))

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return phi4_multimodal_lm_flops(config, lengths)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return hf_speech_embeds(encoder, input_features, frames)

    def hf_placeholders(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> int | None:
        return hf_placeholder_count(extractor, wav)


Phi4Multimodal.lm_view = Phi4MultimodalLM
