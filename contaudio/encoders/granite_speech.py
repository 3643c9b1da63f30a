"""Granite Speech audio tower: the conformer encoder and the windowed Q-Former projector of
ibm-granite/granite-speech-3.3-2b, -3.3-8b and -3.2-8b (``encoder.*`` and ``projector.*`` of the checkpoint).

What the LM receives for a clip (``GraniteSpeechModel.get_audio_features(...).pooler_output``):

1. features: 160 values per 20 ms (two stacked 80-bin log-mel frames, :mod:`contaudio.features.granite_speech`);
2. ``GraniteSpeechCTCEncoder``: ``input_linear`` to ``hidden_dim``, then conformer blocks (half-step
   feed-forward, block-local self-attention with Shaw relative positions over consecutive blocks of
   ``context_size`` (200) frames, a depthwise conv of ``conv_kernel_size`` (15) frames zero-padded at the
   clip's edges, batch norm, half-step feed-forward, layer norm), with the CTC head's softmax fed back
   after the middle block; one row per frame;
3. ``GraniteSpeechEncoderProjector``: the encoder rows zero-padded to whole windows of ``window_size`` (15)
   frames, a Q-Former whose ``window_size // downsample_rate`` (3) learned queries cross-attend to each
   window, a linear layer to the LM width: 3 rows per 0.3 s, 10 per second.

HF's model has no padding mask: its processor pads a batch's waveforms to the longest with zeros, and
the conv, the last attention block and the last projector window of a shorter clip then read that
padding. The one-clip-per-call result is the reference (what the model gives a single audio, and what
HF gives every clip whose length is the batch's longest). :func:`packed_forward` gives every clip of a
batch exactly that, in ONE pass for the whole batch: the rows of all clips are packed (no padding);
attention runs over a grid of every clip's ``context_size`` blocks at once (one SDPA call per layer,
padded keys masked, the relative-position bias HF adds); the depthwise conv runs once over the packed
rows laid out with ``conv_kernel_size - 1`` zero rows between clips (HF's zero padding at both edges of
each clip); the projector (HF's own module) runs once over every clip's windows.

The tower takes any length (attention never spans more than one block, the projector one window), as
HF's processor and model do; nothing is cut.

``returns=`` modes (a clip's rows, the same meaning for every family):

- ``"lm"`` = ``"tower"`` (the tower's rows ARE what the LM receives): ``get_audio_features(...).pooler_output``
  rows of the clip alone (10 per second, LM width); their number is the count of audio placeholders
  ``GraniteSpeechProcessor`` writes into a prompt holding the clip alone (:func:`hf_placeholder_count`).
  Oracle: HF's ``GraniteSpeechFeatureExtractor`` on the clip alone (as ``GraniteSpeechProcessor`` calls it for
  one audio; on torchaudio, or where it is missing on contaudio's independently checked stand-in for
  torchaudio's ``MelSpectrogram``, installed only for that call), ``GraniteSpeechModel.get_audio_features`` on
  our tower, rows by the processor's ``_get_num_audio_features`` count; and ``GraniteSpeechProcessor`` itself
  (a tiny tokenizer holding its audio token) for the placeholders.
- ``"hidden_states"``: the conformer's rows, one per 20 ms frame, ``hidden_dim`` wide, of HF's
  ``output_hidden_states`` entries (:class:`GraniteSpeechHiddenStates`). ``GraniteSpeechCTCEncoder`` records
  them itself (``_can_record_outputs``: each ``GraniteSpeechConformerBlock``'s output, entry 0 the first
  block's input, i.e. ``input_linear``'s output; transformers 5.14.1 and 5.25 alike). Entry
  ``num_layers // 2`` holds the CTC head's softmax feedback: HF adds it in place (``+=``) to the very tensor
  its hook recorded as that block's output, so the recorded entry is the block's output plus the feedback,
  which is what the next block takes; contaudio follows HF. The projector (after the stack) is replaced by an
  identity and the blocks past the deepest requested are dropped. Oracle: ``get_audio_features(...,
  output_hidden_states=True)`` on the clip alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.models.granite_speech.configuration_granite_speech import (
    GraniteSpeechConfig,
    GraniteSpeechEncoderConfig,
)
from transformers.models.granite_speech.feature_extraction_granite_speech import GraniteSpeechFeatureExtractor
from transformers.models.granite_speech.modeling_granite_speech import (
    GraniteSpeechConformerAttention,
    GraniteSpeechConformerBlock,
    GraniteSpeechConformerConvModule,
    GraniteSpeechCTCEncoder,
    GraniteSpeechEncoderProjector,
    GraniteSpeechModel,
    GraniteSpeechPreTrainedModel,
)
from transformers.models.granite_speech.processing_granite_speech import GraniteSpeechProcessor

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import OracleRows, pick_hidden_states, select_rows
from contaudio.encoders.packed import WindowLayout, check_lengths, chunk_frames_per_clip, to_device
from contaudio.encoders.registry import EncoderFamily, HiddenStatesView, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features.granite_speech import FRAMES_STACKED, GraniteSpeechFeatures
from contaudio.features.torchaudio_mel import torchaudio_for_hf_granite_speech
from contaudio.lengths import ceil_div

PROJECTOR_WINDOW = 15  # window_size: encoder frames per projector window (0.3 s)
PROJECTOR_QUERIES = 3  # window_size // downsample_rate: rows per window
HALF_STEP = 0.5  # the conformer's two feed-forward modules add half their output (Macaron style)
GRANITE_SPEECH_FEATURES = GraniteSpeechFeatures()


def granite_speech_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows Granite Speech's projector gives ``M`` feature frames (20 ms each): ``3 * ceil(M / 15)``.

    The encoder keeps one row per frame; the projector pads them to whole windows of 15 and turns each
    window into 3 rows (``window_size // downsample_rate``), so a clip gives ``3 * ceil(M / 15)`` rows,
    0 for ``M = 0``. The processor's ``_get_num_audio_features`` counts the same from the samples.

    >>> [granite_speech_rows(m) for m in (0, 1, 14, 15, 16, 30, 31, 1500)]
    [0, 3, 3, 3, 6, 6, 9, 300]
    """
    return PROJECTOR_QUERIES * ceil_div(mel_len, PROJECTOR_WINDOW)


class GraniteSpeechAudioTower(GraniteSpeechPreTrainedModel):
    """The audio half of ``GraniteSpeechModel``: its ``encoder`` and ``projector``, under the checkpoint's own names.

    Built from the whole ``GraniteSpeechConfig`` (the projector reads ``projector_config``, ``window_size``,
    ``downsample_rate`` and the LM width ``text_config.hidden_size``); the language model is never built.
    """

    def __init__(self, config: GraniteSpeechConfig) -> None:
        super().__init__(config)
        self.encoder = GraniteSpeechCTCEncoder(config.encoder_config)
        self.projector = GraniteSpeechEncoderProjector(config)
        self.post_init()


def check_projector(tower: nn.Module) -> None:
    """The length rule assumes windows of 15 encoder frames giving 3 rows each (every official checkpoint)."""
    projector = tower.projector
    if (projector.window_size, projector.num_queries) != (PROJECTOR_WINDOW, PROJECTOR_QUERIES):
        raise ValueError(
            f"Granite Speech projector with window_size={projector.window_size}, "
            f"downsample_rate={projector.downsample_rate}: contaudio's length rule needs window_size="
            f"{PROJECTOR_WINDOW} and {PROJECTOR_QUERIES} rows per window (downsample_rate=5)"
        )


@dataclass(frozen=True)
class PackedLayout:
    """Where a batch's ``N`` valid frames go, built once per batch on the CPU (index tensors on the device).

    gather: ``(N,)`` flat index of each packed row (clip by clip, in time order) in ``mel.flatten(0, 1)``.
    blocks: the attention grid, ``context_size``-row blocks of each clip (the last one shorter).
    conv_positions / conv_length: each row's place in the zero-separated sequence the depthwise conv
        runs over (every clip preceded and followed by the conv's own zero padding); conv_outputs:
        where each row's output lands in that conv's (unpadded) output.
    window_positions / window_length: each row's place in the projector input, every clip zero-padded
        to whole windows of ``window_size`` rows.
    """

    gather: torch.Tensor
    blocks: WindowLayout
    conv_positions: torch.Tensor
    conv_length: int
    conv_outputs: torch.Tensor
    window_positions: torch.Tensor
    window_length: int

    @classmethod
    def build(
        cls,
        lengths: torch.Tensor,
        frames_per_clip: int,
        context: int,
        conv_padding: tuple[int, int],
        device: torch.device,
    ) -> PackedLayout:
        """``lengths (B,)`` CPU, ``frames_per_clip`` the padded batch's M_max, the encoder's ``context_size`` and
        its depthwise conv's ``(left, right)`` zero padding."""
        clip_of_row = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (N,)
        time = torch.arange(len(clip_of_row)) - F.pad(lengths.cumsum(0)[:-1], (1, 0))[clip_of_row]
        left, right = conv_padding
        conv_starts = F.pad((lengths + left + right).cumsum(0)[:-1], (1, 0))  # (B,) output index of each clip's start
        windows = ceil_div(lengths, PROJECTOR_WINDOW) * PROJECTOR_WINDOW
        window_starts = F.pad(windows.cumsum(0)[:-1], (1, 0))
        return cls(
            gather=to_device(clip_of_row * frames_per_clip + time, device),
            blocks=WindowLayout.from_window_rows(chunk_frames_per_clip(lengths, context)[0], device),
            conv_positions=to_device(left + conv_starts[clip_of_row] + time, device),
            conv_length=int(lengths.sum()) + len(lengths) * (left + right),
            conv_outputs=to_device(conv_starts[clip_of_row] + time, device),
            window_positions=to_device(window_starts[clip_of_row] + time, device),
            window_length=int(windows.sum()),
        )


def scatter_rows(rows: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
    """``[N, C]`` rows into a zero ``[length, C]`` sequence at ``positions (N,)``."""
    return rows.new_zeros(length, rows.shape[1]).index_copy_(0, positions, rows)


def block_attention(attn: GraniteSpeechConformerAttention, hidden: torch.Tensor, layout: PackedLayout,
                    attention_dists: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``GraniteSpeechConformerAttention`` on packed rows ``[N, d]``, every block of every clip in one SDPA call.

    As HF: pre-norm, q/kv projections, a Shaw relative-position bias ``q . rel_pos_emb(i - j)`` added
    to the scores (HF's ``attention_dists`` buffer, cut to the grid's block length), keys past a
    block's end masked with the dtype's lowest value (HF masks the padding of a clip's last block so),
    ``to_out``. Dropout as HF's module applies it (training only).
    """
    num_rows = hidden.shape[0]
    heads = (num_rows, attn.num_heads, attn.dim_head)
    normed = attn.pre_norm(hidden)
    key, value = attn.to_kv(normed).chunk(2, dim=-1)
    q, k, v = layout.blocks.qkv_grid(attn.to_q(normed).reshape(heads), key.reshape(heads), value.reshape(heads))
    block = layout.blocks.window_len  # q, k, v: [blocks, heads, block, dim_head]
    rel_pos_emb = attn.rel_pos_emb(attention_dists[:block, :block])  # [block, block, dim_head]
    bias = torch.einsum("b h c d, c r d -> b h c r", q, rel_pos_emb) * attn.scale
    if layout.blocks.key_mask is not None:
        bias = bias.masked_fill(~layout.blocks.key_mask, torch.finfo(bias.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)  # [blocks, heads, block, dh]
    out = layout.blocks.to_rows(out.transpose(1, 2)).reshape(num_rows, -1)
    return attn.dropout(attn.to_out(out))


def pointwise(conv: nn.Conv1d, rows: torch.Tensor) -> torch.Tensor:
    """A kernel-1 ``Conv1d`` as the linear map it is, on rows ``[N, C_in]`` -> ``[N, C_out]``."""
    return F.linear(rows, conv.weight.squeeze(-1), conv.bias)


def conv_module(conv: GraniteSpeechConformerConvModule, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """``GraniteSpeechConformerConvModule`` on packed rows ``[N, d]``, the depthwise conv once for the batch.

    Norm, pointwise up-projection and GLU per row; the GLU rows go into the zero-separated sequence
    (:class:`PackedLayout`) and one depthwise conv without padding runs over it, so each clip sees
    exactly HF's zero padding at its two edges and nothing of its neighbours; batch norm (running
    statistics in eval; in training, statistics of the real frames only), SiLU, pointwise
    down-projection per row.
    """
    glu = conv.glu(pointwise(conv.up_conv, conv.norm(hidden)))  # GLU over channels (dim 1): [N, inner]
    sequence = scatter_rows(glu, layout.conv_positions, layout.conv_length).T[None]  # [1, inner, L]
    mixed = conv.depth_conv.conv(sequence)[0].T.index_select(0, layout.conv_outputs)  # [N, inner]
    return conv.dropout(pointwise(conv.down_conv, conv.silu(conv.batch_norm(mixed))))


def conformer_block(layer: GraniteSpeechConformerBlock, hidden: torch.Tensor, layout: PackedLayout,
                    attention_dists: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``GraniteSpeechConformerBlock.forward`` on packed rows ``[N, d]`` (its own modules, rows in any batch)."""
    hidden = HALF_STEP * layer.ff1(hidden) + hidden
    hidden = block_attention(layer.attn, hidden, layout, attention_dists) + hidden
    hidden = conv_module(layer.conv, hidden, layout) + hidden
    hidden = HALF_STEP * layer.ff2(hidden) + hidden
    return layer.post_norm(hidden)


def conformer_states(
    tower: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, states: tuple[int, ...]
) -> tuple[PackedLayout, list[torch.Tensor]]:
    """The conformer's hidden states ``states`` on a padded batch, each clip as HF encodes it alone: the batch's
    :class:`PackedLayout` and, per entry of ``states``, the packed rows ``[N, hidden_dim]`` of every clip.

    Entries as HF's ``output_hidden_states`` numbers them: 0 is ``input_linear``'s output (the first block's
    input), ``i`` block ``i``'s output, the CTC head's softmax feedback included after block
    ``num_layers // 2`` (HF records that block's output and then adds the feedback to it in place). Only the
    blocks up to the deepest entry run. mel: ``[B, M_max, 160]``; lengths: ``(B,)`` valid frames (any device;
    read on CPU); the padding of the batch is never read.
    """
    lengths = check_lengths(mel, lengths)
    encoder = tower.encoder
    depth = max(states)
    if depth > len(encoder.layers):
        raise ValueError(
            f"Granite Speech hidden state {depth} needs {depth} conformer blocks, but this encoder holds "
            f"{len(encoder.layers)} (built for returns='hidden_states' with shallower layers?)"
        )
    first = encoder.layers[0]
    layout = PackedLayout.build(
        lengths, mel.shape[1], first.attn.context_size, first.conv.depth_conv.padding, mel.device
    )
    hidden = encoder.input_linear(mel.flatten(0, 1).index_select(0, layout.gather))  # [N, d]
    recorded = {0: hidden}
    for index, layer in enumerate(encoder.layers[:depth], start=1):
        hidden = conformer_block(layer, hidden, layout, encoder.attention_dists)
        if index == encoder.num_layers // 2:  # self-conditioning: the CTC head's softmax fed back
            hidden = hidden + encoder.out_mid(torch.softmax(encoder.out(hidden), dim=-1))
        recorded[index] = hidden
    return layout, [recorded[index] for index in states]


def packed_forward(tower: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Granite Speech encoder + projector on a padded batch, each clip as HF encodes it alone: ``[sum rows, D]``.

    mel: ``[B, M_max, 160]``; lengths: ``(B,)`` valid frames (any device; read on CPU). The padding of
    the batch is never read. Returns the projector rows of every clip, clip after clip
    (:func:`granite_speech_rows` each).
    """
    check_projector(tower)
    layout, (hidden,) = conformer_states(tower, mel, lengths, (len(tower.encoder.layers),))
    windows = scatter_rows(hidden, layout.window_positions, layout.window_length)  # [P, d]
    return tower.projector(windows[None])[0]  # [sum rows, D]


def granite_speech_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the Granite Speech tower over clips of ``lengths`` frames, each as encoded alone.

    Encoder, per frame: ``input_linear`` (``160 d``); per block two feed-forwards (``2 * 2 d f d``),
    q/kv/out projections (``4 d i``, ``i = heads * dim_head``), pointwise convs (``d 2c + c d``,
    ``c = conv_expansion_factor * d``) and the depthwise conv (``c k``); the CTC head and its feedback
    once (``2 d o``). Per attention block of ``r`` frames and block: scores, relative-position bias and
    weighted sum (``3 r^2 i``). Projector, per window (``w = 15`` rows, ``n = 3`` queries, Q-Former
    width ``h``, encoder width ``e``, intermediate ``I``, LM width ``D``) and Q-Former layer: the
    queries' self-attention (``4 n h^2 + 2 n^2 h``), cross-attention (``n h^2`` query projection,
    ``2 w e h`` keys and values, ``2 n w h`` scores and sum, ``n h^2`` output), feed-forward
    (``2 n h I``); then ``n h D``. In the first layer the queries' self-attention and cross-attention
    projection run on the learned queries, once per call (they broadcast over the windows): once
    per clip here, as HF runs one clip per call (our batched call runs them once per batch).

    A clip's last attention block is as long as its frames here; HF pads it to ``context_size`` (so
    the counts are equal for clips of whole blocks), and in a mixed batch ours pads every block to the
    batch's longest block (attention scores only, a few % of a block's matmuls).
    """
    full = config if isinstance(config, GraniteSpeechConfig) else GraniteSpeechConfig(**_without_type(config))
    enc, qformer = full.encoder_config, full.projector_config
    d, inner, conv_channels = enc.hidden_dim, enc.num_heads * enc.dim_head, enc.conv_expansion_factor * enc.hidden_dim
    block = (
        2 * 2 * d * enc.feedforward_mult * d  # ff1, ff2
        + (1 + 2 + 1) * d * inner  # to_q, to_kv, to_out
        + d * 2 * conv_channels  # up_conv (both halves of the GLU)
        + conv_channels * enc.conv_kernel_size  # depthwise conv
        + conv_channels * d  # down_conv
    )
    per_frame = enc.input_dim * d + enc.num_layers * block + 2 * d * enc.output_dim  # + out, out_mid
    n, w, h = PROJECTOR_QUERIES, PROJECTOR_WINDOW, qformer.hidden_size
    queries = 4 * n * h * h + 2 * n * n * h + n * h * h  # self-attention + cross-attention query projection
    window = 2 * w * qformer.encoder_hidden_size * h + 2 * n * w * h + n * h * h + 2 * n * h * qformer.intermediate_size
    per_window = qformer.num_hidden_layers * (queries + window) + n * h * full.text_config.hidden_size
    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        blocks, tail = divmod(length, enc.context_size)
        attention = blocks * enc.context_size**2 + tail**2
        windows = ceil_div(length, w)
        macs += length * per_frame + enc.num_layers * 3 * attention * inner
        macs += windows * per_window - (windows - 1) * queries  # the first layer's queries: once per call
    return float(FLOPS_PER_MAC * macs)


def _without_type(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "model_type"}


def hf_processor_rows(tower: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Rows ``GraniteSpeechProcessor`` gives clips of ``frames`` model frames, by its extractor's own
    ``_get_num_audio_features`` (on a sample count with that many frames: ``2 * frames`` STFT hops)."""
    hop = GRANITE_SPEECH_FEATURES.stft_hop
    counter = SimpleNamespace(
        melspec_kwargs={"hop_length": hop},
        projector_window_size=tower.projector.window_size,
        projector_downsample_rate=tower.projector.downsample_rate,
    )
    samples = (frames * FRAMES_STACKED * hop).tolist()
    return torch.tensor(GraniteSpeechFeatureExtractor._get_num_audio_features(counter, samples))


def hf_processor(extractor: FeatureExtractionMixin) -> GraniteSpeechProcessor:
    """``GraniteSpeechProcessor`` around the checkpoint's extractor and a tiny tokenizer holding the processor's own
    default audio token (``<|audio|>``), named ``audio_token`` on the tokenizer as the hub's tokenizer names it."""
    token = inspect.signature(GraniteSpeechProcessor).parameters["audio_token"].default
    return GraniteSpeechProcessor(extractor, tiny_tokenizer([token], named={"audio_token": token}))


def hf_placeholder_count(extractor: FeatureExtractionMixin, wav: np.ndarray) -> int:
    """The audio placeholders ``GraniteSpeechProcessor`` writes into the prompt ``<|audio|>`` holding ``wav``
    alone (its extractor's ``audio_embed_sizes``, expanded by the processor), counted in the prompt's token ids.

    HF's extractor runs inside :func:`torchaudio_for_hf_granite_speech` (torchaudio, else the stand-in for this
    call only); like the extractor, the processor refuses clips shorter than ``n_fft // 2 + 1`` samples."""
    clip = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    with torchaudio_for_hf_granite_speech():
        processor = hf_processor(extractor)
        out = processor(text=processor.audio_token, audio=[clip])
    return int((torch.as_tensor(out["input_ids"]) == processor.tokenizer.audio_token_id).sum())


class GraniteSpeechHiddenStates(HiddenStatesView):
    """:class:`~contaudio.encoders.registry.HiddenStatesView` of the Granite Speech tower, whose conformer sits one
    level down (``encoder.layers`` of :class:`GraniteSpeechAudioTower`) and whose config nests the encoder's
    (``encoder_config.hidden_dim``): the width read through HF's config class, the stack cut by its dotted path."""

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The conformer's width, ``encoder_config.hidden_dim`` (HF's default where the config leaves it out)."""
        return int(encoder_settings(encoder_config).hidden_dim)

    def trim(self, encoder: PreTrainedModel) -> None:
        """Keep the conformer blocks up to the deepest requested (at least one: HF records hidden state 0, the
        first block's input, from that block's hook); the projector (built and strictly loaded with the tower, as
        every family's modules are) becomes an identity, so HF's ``get_audio_features`` hands the last kept
        block's rows through unchanged and nothing of it is run or trained."""
        blocks: nn.ModuleList = encoder.get_submodule(self.tower.layers_attr)
        encoder.set_submodule(self.tower.layers_attr, blocks[: max(*self.layers, 1)])
        for name in self.tower.head_modules:
            encoder.set_submodule(name, nn.Identity())


def encoder_settings(config: Mapping[str, Any]) -> GraniteSpeechEncoderConfig:
    """The ``GraniteSpeechEncoderConfig`` inside a Granite Speech config dict (HF's defaults filled in)."""
    return GraniteSpeechConfig(**_without_type(config)).encoder_config


@register
class GraniteSpeech(EncoderFamily):
    name = "granite_speech"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"granite_speech": ()}
    weight_prefixes = (
        {"encoder.": "encoder.", "projector.": "projector."},  # the hub's names (save_pretrained writes them too)
        {"model.encoder.": "encoder.", "model.projector.": "projector."},  # the model's module names (state_dict)
    )
    encoder_class = GraniteSpeechAudioTower
    config_class = GraniteSpeechConfig
    default_features = GRANITE_SPEECH_FEATURES
    returns = "get_audio_features(...).pooler_output rows of the clip alone (projector output, 10 per second, LM width)"
    oracle_path = (
        "GraniteSpeechFeatureExtractor on the clip alone (as GraniteSpeechProcessor calls it), then "
        "GraniteSpeechModel.get_audio_features on our tower, rows by the processor's _get_num_audio_features"
    )

    num_layers_key: ClassVar[str] = "num_layers"  # of encoder_config (nested: read by num_layers)
    hidden_dim_key: ClassVar[str] = "hidden_dim"  # of encoder_config (nested: GraniteSpeechHiddenStates.output_dim)
    layers_attr: ClassVar[str] = "encoder.layers"  # the conformer blocks inside GraniteSpeechAudioTower (dotted)
    head_modules: ClassVar[tuple[str, ...]] = ("projector",)  # after the stack (the CTC feedback is inside it)

    rows = staticmethod(granite_speech_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return packed_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return granite_speech_flops(config, lengths)

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width the projector maps to (``text_config.hidden_size``)."""
        return int(GraniteSpeechConfig(**_without_type(encoder_config)).text_config.hidden_size)

    def num_layers(self, encoder_config: dict[str, Any]) -> int:
        """The conformer's block count, ``encoder_config.num_layers`` (HF's default where left out)."""
        return int(encoder_settings(encoder_config).num_layers)

    def view(
        self, returns: str | None, layers: Sequence[int] | None = None, encoder_config: dict[str, Any] | None = None
    ) -> EncoderFamily:
        """``"lm"`` and ``"tower"``: the family itself; ``"hidden_states"``: :class:`GraniteSpeechHiddenStates`."""
        view = super().view(returns, layers, encoder_config)
        return GraniteSpeechHiddenStates(self, view.layers) if isinstance(view, HiddenStatesView) else view

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Every hidden state has one row per feature frame (20 ms): ``M``.

        >>> GraniteSpeech().hidden_rows(7), GraniteSpeech().hidden_rows(torch.tensor([0, 3])).tolist()
        (7, [0, 3])
        """
        return mel_len.clone() if isinstance(mel_len, torch.Tensor) else int(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """The packed conformer up to the deepest of ``layers`` (:func:`conformer_states`), each clip as HF encodes
        it alone: ``[len(layers), sum M, hidden_dim]``."""
        return torch.stack(conformer_states(encoder, mel, lengths, layers)[1])

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """``GraniteSpeechModel.get_audio_features(..., output_hidden_states=True)`` on the batch in one call (HF's
        encoder records them: see the module docstring), entries ``layers``, each clip's first ``frames`` rows
        (all of them for a clip alone): ``[len(layers), sum frames, hidden_dim]``."""
        out = GraniteSpeechModel.get_audio_features(encoder, input_features, output_hidden_states=True)
        states = pick_hidden_states(out.hidden_states, layers, len(encoder.encoder.layers))  # [L, B, F, d]
        return torch.stack([select_rows(state, frames) for state in states])

    def hf_placeholders(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> int:
        """The audio placeholders ``GraniteSpeechProcessor`` writes for the clip alone (:func:`hf_placeholder_count`):
        the tower's rows are the LM's, so every ``"lm"``/``"tower"`` answer carries them."""
        return hf_placeholder_count(extractor, wav)

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's model takes time-major ``[B, F, 160]`` features, as contaudio's batch already is."""
        return mel, lengths

    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """``GraniteSpeechProcessor``'s extractor call for one audio: ``(input_features [1, F, 160], F)``.

        HF's extractor runs on torchaudio, or where torchaudio is missing on contaudio's stand-in for its
        ``MelSpectrogram``, installed for this call only (:func:`torchaudio_for_hf_granite_speech`)."""
        clip = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        with torchaudio_for_hf_granite_speech():
            features = extractor([clip], device="cpu")["input_features"]
        return features, int(features.shape[1])

    def oracle(self, *args: Any, **kwargs: Any) -> OracleRows:
        """The registry's oracle with HF's Granite extractor runnable for all of it (the extractor call and any
        processor call counting the prompt's placeholders): torchaudio, else the stand-in for this call only."""
        with torchaudio_for_hf_granite_speech():
            return super().oracle(*args, **kwargs)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``GraniteSpeechModel.get_audio_features`` for the batch in one call, as HF runs a batch (bench's HF
        column); each clip's rows by the processor's count (all rows for a clip alone)."""
        check_projector(encoder)
        projected = GraniteSpeechModel.get_audio_features(encoder, input_features).pooler_output  # [B, R, D]
        return select_rows(projected, hf_processor_rows(encoder, frames.cpu()))
