"""Gemma 3n audio tower (``model.audio_tower.*`` of google/gemma-3n-E2B, -E2B-it, -E4B, -E4B-it) and what the model
feeds its LM from it (``returns="lm"``, :class:`Gemma3nLM`).

A USM-style conformer over Gemma 3n's own log-mel (:mod:`contaudio.features.gemma3n`, 100 frames/s):
the SSCP subsampler (two ``Conv2d`` with time stride 2 and *reverse-causal* time padding, each with a
cumulative group norm over time, then a linear projection: 25 rows/s), a stack of conformer blocks (feed-forward,
chunked local self-attention over 12 rows with 12 rows of left context and none to the right,
a causal depthwise ``Conv1d``, feed-forward, RMSNorm), then every ``conf_reduction_factor``-th (4th)
row: 6.25 rows/s (160 ms each) of ``hidden_size`` (1536). ``Gemma3nModel.get_audio_features`` then passes the rows
through ``embed_audio`` (RMSNorm -> ``Linear(1536, LM width)`` -> RMSNorm), the LM's adaptor, whose
weights live outside the tower (``model.embed_audio.*``).

Everything after the SSCP is causal, and the SSCP convs read 2 frames *past* each row (their time
padding is ``(0, kernel - 1)``), so a row depends on the clip up to slightly after it. Alone, HF
zero-pads past the clip's end. In one HF batch a shorter clip differs: the processor gives it 2-3
more frames (:mod:`contaudio.features.gemma3n`), so sometimes one row more, and its last rows read the
batch's padding (the log-mel of silence, then non-zero conv outputs). contaudio gives every clip its
ALONE result in any batch: :func:`gemma3n_forward` zeroes the padding before each conv, exactly where
HF's own padding is (``tests/encoders/test_gemma3n.py`` shows HF's batched call giving a clip a row more).

Clip limit: ``Gemma3nProcessor`` truncates audio at 480,000 samples (30 s -> 2997 frames -> 188 rows)
and reserves a FIXED ``audio_seq_length`` of 188 soft tokens per clip whatever its length; the model
pads the tower's rows up to 188 with the embedding of its last audio-vocabulary token and raises on an
audio whose tower gives more than 188 rows (> 3008 frames, which its processor never passes). A longer clip
raises (``long_clip="raise"``) or is encoded as consecutive 30 s pieces, each exactly as HF's processor and model
handle a 30 s clip, rows concatenated (``long_clip="windows"``; in ``"lm"`` mode 188 soft tokens per piece, as
a prompt holding each piece as its own audio gets): never cut silently.

Modes (``returns=``):

* ``"lm"`` (:class:`Gemma3nLM`): the 188 soft tokens the model scatters into its LM's input for a clip alone:
  ``embed_audio`` of the tower's valid rows, then the embedding of id ``text vocab_size - 1`` (the last
  audio-vocabulary token) up to 188, ``LM width`` wide; ``find_length`` = 188 (per 30 s piece) = the
  placeholders ``Gemma3nProcessor`` writes. Oracle: ``Gemma3nProcessor`` on the clip, then HF's own
  ``Gemma3nModel.forward`` (where the padding lives, inline) on our modules, the rows it hands its LM at the
  placeholders (:func:`hf_soft_tokens`).
* ``"tower"``: the audio tower's valid rows (``get_audio_features(...).last_hidden_state`` where the output
  ``audio_mel_mask`` is False), 6.25 per second, ``hidden_size`` wide, before ``embed_audio``.
  Oracle: HF's extractor as ``Gemma3nProcessor`` calls it (on each 30 s piece), then
  ``Gemma3nModel.get_audio_features`` on our tower with the processor's mask inverted as
  ``Gemma3nModel.forward`` passes it, one audio per call, rows by the output ``audio_mel_mask``.
* ``"hidden_states"``: the conformer's hidden states at 25 rows/s (``ceil(M / 4)`` per 30 s window): 0 = the
  first block's input (the SSCP's output), ``i`` = block ``i``'s output (before the 4x reduction).
  HF's ``output_hidden_states`` records none of them (its record table names the text decoder's layer class:
  transformers 5.25 returns an empty tuple, 5.14 the final output alone), so the oracle runs HF's own forward
  (``get_audio_features``) on each 30 s piece alone with forward hooks on HF's own SSCP and conformer blocks
  (:func:`hf_conformer_states`).

A clip of <= 512 samples gives the extractor no frame: contaudio gives it no row in every mode (``[0, D]``).
HF has no answer for it: its processor writes 188 placeholders, and its model raises on the empty input
(the SSCP conv refuses it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache, partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig, Gemma3nConfig
from transformers.models.gemma3n.modeling_gemma3n import (
    Gemma3nAudioEncoder,
    Gemma3nModel,
    Gemma3nMultimodalEmbedder,
    Gemma3nPreTrainedModel,
)
from transformers.models.gemma3n.processing_gemma3n import Gemma3nProcessor

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import OracleRows, ask_hf, pick_hidden_states, select_rows
from contaudio.encoders.packed import check_lengths, chunk_frames_per_clip, mel_chunks, to_device
from contaudio.encoders.refusals import ExpectedRefusal
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features.gemma3n import MAX_LENGTH, Gemma3nLogMel
from contaudio.lengths import ceil_div, conv_out, windowed_rows

GEMMA3N_FEATURES = Gemma3nLogMel()  # the checkpoints' preprocessor_config.json: HF's defaults
CONV_TIME_STRIDE = 2  # each SSCP conv halves time: sscp_conv_stride_size[i][0]
CONV_LAYERS = 2  # SSCP conv_0 and conv_1
REDUCTION_FACTOR = 4  # conf_reduction_factor: every 4th conformer row is kept
WINDOW_FRAMES = GEMMA3N_FEATURES.frames(MAX_LENGTH)  # 2997: what the processor passes for a 30 s clip
FFW_MODULES = 2  # ffw_layer_start and ffw_layer_end, each d -> 4 d -> d
FFW_EXPANSION = 4
QKV_POST_PROJECTIONS = 4  # q, k, v and post, each d x d
LCONV_PROJECTIONS = 3  # linear_start (d -> 2 d) and linear_end (d -> d)
SCORE_MATMULS = 2  # queries x keys (context) and probabilities x values
FREQ_PADDING = 2  # the SSCP convs pad frequency by 1 on each side
# A pass of the forward pads its windows to the longest; windows more than 25 % shorter start a new pass (one pass
# costs 12 layers of fixed overheads, so windows of <= 4 s share one pass whatever their spread).
PADDING_SLACK = 0.25
SHORT_PASS_FRAMES = 400


def conformer_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the conformer blocks run on for one window of ``M <= 2997`` frames (the SSCP's output, 25 per second):
    ``((M - 1) // 2 + 1 - 1) // 2 + 1 = ceil(M / 4)`` (0 for no frame); HF's mask marks exactly these valid.

    >>> [conformer_rows(m) for m in (0, 1, 4, 5, 100, 2997)]
    [0, 1, 1, 2, 25, 750]
    """
    rows = mel_len
    for _ in range(CONV_LAYERS):
        rows = conv_out(rows, CONV_TIME_STRIDE)
    return rows


def gemma3n_window_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Gemma 3n tower gives one clip of ``M <= 2997`` frames: ``ceil(M / 16)``.

    Each SSCP conv (time stride 2, padding ``(0, kernel - 1)``) keeps ``(T - 1) // 2 + 1`` rows; the
    conformer output keeps every 4th: ``rows = ((((M - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 4 + 1``, which
    is ``ceil(M / 16)`` (0 for no frame). The encoder's output mask marks exactly these rows valid.

    >>> [gemma3n_window_rows(m) for m in (0, 1, 16, 17, 32, 33, 100, 2997)]
    [0, 1, 1, 2, 2, 3, 7, 188]
    """
    return conv_out(conformer_rows(mel_len), REDUCTION_FACTOR)


def gemma3n_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows contaudio returns for ``M`` mel frames: ``188 * (M // 2997) + ceil((M % 2997) / 16)``.

    A clip of <= 30 s is one window (2997 frames is what the processor passes for 30 s, 188 rows:
    its ``audio_seq_length``); a longer one (``long_clip="windows"``) is consecutive 30 s pieces of
    2997 frames each (:meth:`~contaudio.features.gemma3n.Gemma3nLogMel.frames`), each encoded alone.

    >>> [gemma3n_rows(m) for m in (1, 16, 17, 2997, 2998, 3494, 5994)]
    [1, 1, 2, 188, 189, 220, 376]
    >>> gemma3n_rows(torch.tensor([0, 2997, 3013])).tolist()
    [0, 188, 189]
    """
    return windowed_rows(mel_len, gemma3n_window_rows, WINDOW_FRAMES)


def gemma3n_hidden_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows of each conformer hidden state for ``M`` mel frames: ``750 * (M // 2997) + ceil((M % 2997) / 4)``
    (each 30 s piece alone, as :func:`gemma3n_rows`).

    >>> [gemma3n_hidden_rows(m) for m in (0, 1, 2997, 2998, 5994)]
    [0, 1, 750, 751, 1500]
    >>> gemma3n_hidden_rows(torch.tensor([4, 5])).tolist()
    [1, 2]
    """
    return windowed_rows(mel_len, conformer_rows, WINDOW_FRAMES)


def check_geometry(encoder: PreTrainedModel) -> None:
    """The length rule assumes two SSCP convs of time stride 2 and a reduction factor of 4."""
    config = encoder.config
    strides = [stride[0] for stride in config.sscp_conv_stride_size]
    if strides != [CONV_TIME_STRIDE] * CONV_LAYERS or config.conf_reduction_factor != REDUCTION_FACTOR:
        raise ValueError(
            f"Gemma 3n tower with SSCP time strides {strides} and conf_reduction_factor "
            f"{config.conf_reduction_factor}: contaudio's length rule needs {[CONV_TIME_STRIDE] * CONV_LAYERS} "
            f"and {REDUCTION_FACTOR}"
        )


def valid_rows(rows: int, counts: torch.Tensor) -> torch.Tensor:
    """``[K, rows]`` bool: True where a row index is below each window's count ``[K]`` (on ``counts``' device)."""
    return torch.arange(rows, device=counts.device) < counts[:, None]


def subsample(sscp: nn.Module, mel: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's SSCP on windows as each one alone: ``mel [K, W, n_mels]`` (zero past ``frames [K]``) ->
    ``([K, T2, d], valid rows [K])``.

    Each conv pads time with ``kernel - 1`` zeros past the end of its input; alone, those are the
    only frames a window's last rows read past its end. In a batch, rows past a window's end hold its
    padding, so the conv_0 rows past each window's ``conv_out(frames)`` are zeroed before conv_1 (the
    mel past ``frames`` is zero already), and every valid row equals HF's on the window alone.
    """
    hidden = sscp.conv_0(mel[:, None])  # [K, C0, T1, F1]
    rows = conv_out(frames, CONV_TIME_STRIDE)
    hidden = hidden * valid_rows(hidden.shape[2], to_device(rows, hidden.device))[:, None, :, None]
    hidden = sscp.conv_1(hidden)  # [K, C1, T2, F2]
    batch, channels, steps, freq = hidden.shape
    hidden = sscp.input_proj_linear(hidden.permute(0, 2, 3, 1).reshape(batch, steps, freq * channels))
    return hidden, conv_out(rows, CONV_TIME_STRIDE)


def encode_windows(encoder: PreTrainedModel, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """HF's modules on windows as each one alone: ``mel [K, W, n_mels]`` (zero past ``frames [K]``, CPU) ->
    ``[sum rows, hidden_size]``: :func:`subsample`, every conformer block once with HF's padding mask (its
    attention is local and causal, its convolution causal: rows past a window's end never reach a valid
    row), then every 4th row, the valid ones window by window."""
    hidden, conv_rows = subsample(encoder.subsample_conv_projection, mel, frames)
    padding = ~valid_rows(hidden.shape[1], to_device(conv_rows, hidden.device))  # HF's mask: True = padding
    for block in encoder.conformer:
        hidden = block(hidden, padding)
    return select_rows(hidden[:, ::REDUCTION_FACTOR], gemma3n_window_rows(frames))


def encode_hidden_states(
    encoder: PreTrainedModel, mel: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """:func:`encode_windows` up to the deepest of ``layers``, keeping those hidden states (0: the SSCP's output,
    ``i``: conformer block ``i``'s) at 25 rows/s: ``[len(layers), sum conv rows, hidden_size]``, the valid rows
    window by window (the blocks are causal: rows past a window's end never reach a valid row)."""
    hidden, conv_rows = subsample(encoder.subsample_conv_projection, mel, frames)
    padding = ~valid_rows(hidden.shape[1], to_device(conv_rows, hidden.device))  # HF's mask: True = padding
    kept = {0: hidden}
    for index, block in enumerate(encoder.conformer[: max(layers)], start=1):
        hidden = kept[index] = block(hidden, padding)
    return torch.stack([select_rows(kept[layer], conv_rows) for layer in layers])


def length_groups(frames: torch.Tensor) -> list[torch.Tensor]:
    """Window indices ``(K,)`` -> passes of similar length, longest first: a window joins the current pass while it
    is within :data:`PADDING_SLACK` of the pass's first (longest) window, or that one is <= :data:`SHORT_PASS_FRAMES`.

    >>> [group.tolist() for group in length_groups(torch.tensor([100, 2997, 2900, 50, 1000, 900]))]
    [[1, 2], [4, 5], [0, 3]]
    """
    groups: list[list[int]] = []
    longest = 0
    for index in torch.argsort(frames, descending=True, stable=True).tolist():
        length = int(frames[index])
        if groups and (length >= (1 - PADDING_SLACK) * longest or longest <= SHORT_PASS_FRAMES):
            groups[-1].append(index)
        else:
            groups.append([index])
            longest = length
    return [torch.tensor(group) for group in groups]


WindowEncoder = Callable[[PreTrainedModel, torch.Tensor, torch.Tensor], torch.Tensor]


def forward_windows(
    encoder: PreTrainedModel,
    mel: torch.Tensor,
    lengths: torch.Tensor,
    encode: WindowEncoder,
    window_rows: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Each clip of a padded batch cut into its 30 s windows (2997 frames, see :func:`gemma3n_rows`), the windows
    run through ``encode(encoder, mel [K, W, n_mels], frames [K]) -> [..., sum window_rows(frames), d]`` in
    zero-padded passes of similar length (:func:`length_groups`: one pass when lengths are within 25 %; HF's own
    batched call pads every clip to the longest), their rows returned clip by clip (along dim -2).

    mel: ``[B, M_max, n_mels]``; lengths: ``(B,)`` valid frames (read on CPU).
    """
    lengths = check_lengths(mel, lengths)
    check_geometry(encoder)
    windows, frames = mel_chunks(mel, lengths, WINDOW_FRAMES)  # [K, n_mels, W], [K] (CPU)
    rows: list[torch.Tensor | None] = [None] * len(frames)
    for group in length_groups(frames):
        width = int(frames[group].max())
        chosen = windows.index_select(0, to_device(group, windows.device))[:, :, :width].transpose(1, 2)
        flat = encode(encoder, chosen, frames[group])
        pieces = flat.split(window_rows(frames[group]).tolist(), dim=-2)
        for index, piece in zip(group.tolist(), pieces, strict=True):
            rows[index] = piece
    return torch.cat(rows, dim=-2)


def gemma3n_forward(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The Gemma 3n tower on a padded batch, each clip as HF gives it alone: ``[sum rows, hidden_size]``
    (:func:`forward_windows` of :func:`encode_windows`)."""
    return forward_windows(encoder, mel, lengths, encode_windows, gemma3n_window_rows)


def gemma3n_hidden_forward(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """The conformer's hidden states ``layers`` on a padded batch, each clip as HF gives it alone:
    ``[len(layers), sum hidden rows, hidden_size]`` (the blocks run only up to the deepest one)."""
    return forward_windows(encoder, mel, lengths, partial(encode_hidden_states, layers=layers), conformer_rows)


def setting(config: Mapping[str, Any] | Any, key: str) -> Any:
    """A value of an encoder config given as a dict or an HF config object."""
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def window_macs(config: Mapping[str, Any] | Any, frames: int) -> int:
    """MACs of the tower on one window of ``frames`` mel frames, as HF's forward runs it (see :func:`gemma3n_flops`)."""
    d, layers = int(setting(config, "hidden_size")), int(setting(config, "conf_num_hidden_layers"))
    chunk, kernel = int(setting(config, "conf_attention_chunk_size")), int(setting(config, "conf_conv_kernel_size"))
    left, right = (
        int(setting(config, "conf_attention_context_left")),
        int(setting(config, "conf_attention_context_right")),
    )
    past = max(0, left - 1)
    context, span = chunk + past + right, past + right + 1  # keys per query block; relative positions
    freq, steps, in_channels, macs = int(setting(config, "input_feat_size")), frames, 1, 0
    for (kernel_t, kernel_f), (stride_t, stride_f), channels in zip(
        setting(config, "sscp_conv_kernel_size"),
        setting(config, "sscp_conv_stride_size"),
        setting(config, "sscp_conv_channel_size"),
        strict=True,
    ):
        steps, freq = conv_out(steps, stride_t), (freq + FREQ_PADDING - kernel_f) // stride_f + 1
        macs += steps * freq * channels * in_channels * kernel_t * kernel_f
        in_channels = channels
    macs += steps * in_channels * freq * d  # input_proj_linear
    dense = FFW_MODULES * 2 * FFW_EXPANSION + QKV_POST_PROJECTIONS + LCONV_PROJECTIONS  # 23 d x d per row
    query_rows = ceil_div(steps, chunk) * chunk  # HF pads the queries to whole blocks
    per_layer = steps * (dense * d * d + kernel * d) + span * d * d  # + pos_proj of the span's sinusoids
    per_layer += query_rows * (SCORE_MATMULS * context + span) * d
    return macs + layers * per_layer


def gemma3n_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the Gemma 3n tower over clips of ``lengths`` mel frames, each 30 s window as it runs alone.

    Per window of ``M`` frames: the two SSCP ``Conv2d`` (``T_i x F_i`` outputs, ``C_i`` channels,
    ``3 x 3`` taps, ``T_1 = ceil(M / 2)``), ``input_proj_linear`` (``T (C F) d``); per conformer layer
    and row ``23 d^2`` (two feed-forwards ``2 * 8 d^2``, q/k/v/post ``4 d^2``, ``linear_start`` ``2 d^2``,
    ``linear_end`` ``d^2``) and the depthwise conv (``k d``); per query row (padded to whole 12-row blocks)
    the logits over the 24-key context, the relative-position logits over 13 offsets and the weighted
    sum (``(2 * 24 + 13) d``); per layer ``pos_proj`` of the 13 offsets (``13 d^2``). A padded batch
    computes more (HF's and ours run the padding too); this counts each window's own work.
    """
    frames = [
        min(WINDOW_FRAMES, m - start) for m in torch.as_tensor(lengths).tolist() for start in range(0, m, WINDOW_FRAMES)
    ]
    return float(FLOPS_PER_MAC * sum(window_macs(config, m) for m in frames))


class PassThroughEmbedder(nn.Module):
    """Stands in for ``Gemma3nModel.embed_audio`` (the LM's adaptor, not part of the tower): rows unchanged."""

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return inputs_embeds


class Gemma3nTowerHost(nn.Module):
    """Runs ``Gemma3nModel.get_audio_features`` on our tower without the LM around it (its
    ``last_hidden_state`` is the tower's output; ``pooler_output``, the adaptor's, passes it through)."""

    def __init__(self, audio_tower: nn.Module) -> None:
        super().__init__()
        self.audio_tower = audio_tower
        self.embed_audio = PassThroughEmbedder()


def hf_windows(features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-layout features ``[B, F, n_mels]`` + valid frames ``[B]`` -> the audios HF's model gets: ``[K, W, n_mels]``,
    ``[K]``. A clip of <= 2997 frames is one audio (unchanged); a longer one its 30 s pieces (zero-padded)."""
    if features.shape[1] <= WINDOW_FRAMES:
        return features, frames
    windows, window_frames = mel_chunks(features, frames.cpu(), WINDOW_FRAMES)
    return windows.transpose(1, 2), window_frames


def hf_conformer_states(encoder: PreTrainedModel, features: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """HF's forward on one audio alone (``[1, F, n_mels]``, every frame valid, as the processor passes a clip of
    <= 30 s) with forward hooks on HF's own modules: hidden state 0 is the output of ``subsample_conv_projection``
    (the first block's input), ``i`` the output of ``conformer[i - 1]``; ``[len(layers), rows, hidden_size]``.

    The run is ``Gemma3nModel.get_audio_features`` on our tower, as the model calls it. The rows are the ones HF's
    mask, as HF hands it to its blocks, marks valid (all of them, alone); with no block (a tower trimmed to none)
    every row of HF's SSCP output. HF's ``output_hidden_states`` cannot be the oracle: it records
    layers of the text decoder's class, none of which the audio tower holds.
    """
    states: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []

    def record_block(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        states.append(output)
        masks.append(args[1])

    hooks = [encoder.subsample_conv_projection.register_forward_hook(lambda _m, _a, output: states.append(output))]
    hooks += [block.register_forward_hook(record_block) for block in encoder.conformer]
    frames = features.shape[1]
    try:
        valid = valid_rows(frames, torch.tensor([frames], device=features.device))  # the processor's mask
        Gemma3nModel.get_audio_features(Gemma3nTowerHost(encoder), features, ~valid)
    finally:
        for hook in hooks:
            hook.remove()
    picked = pick_hidden_states(tuple(states), layers, len(encoder.conformer))[:, 0]  # [L, T, d]
    return picked[:, ~masks[0][0]] if masks else picked


@register
class Gemma3n(EncoderFamily):
    name = "gemma3n"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"gemma3n": ("audio_config",), "gemma3n_audio": ()}
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = Gemma3nAudioEncoder
    config_class = Gemma3nAudioConfig
    default_features = GEMMA3N_FEATURES
    output_dim_key: ClassVar[str] = "hidden_size"
    window_frames: ClassVar[int | None] = WINDOW_FRAMES
    num_layers_key: ClassVar[str] = "conf_num_hidden_layers"
    hidden_dim_key: ClassVar[str] = "hidden_size"
    layers_attr: ClassVar[str] = "conformer"
    head_modules: ClassVar[tuple[str, ...]] = ()  # after the blocks: a 4x row reduction, no weights
    returns = (
        "audio tower rows the encoder's mask marks valid (6.25 Hz, hidden_size wide, before embed_audio); "
        "not padded to the processor's fixed 188 soft tokens"
    )
    oracle_path = (
        "Gemma3nAudioFeatureExtractor as Gemma3nProcessor calls it (each 30 s piece) -> "
        "Gemma3nModel.get_audio_features(features, ~input_features_mask) one audio per call, "
        "rows where its audio_mel_mask is False"
    )

    expected_refusals = (
        ExpectedRefusal(
            r"RuntimeError: Calculated padded input size per channel: .*Kernel size can't be greater than actual",
            "HF's Gemma3nAudioFeatureExtractor gives a clip of <= frame_length (512) samples no frame, and the tower's "
            "first conv cannot take an empty input; contaudio gives such a clip 0 rows",
            frames=range(0, 1),
        ),
    )
    min_oracle_share = 0.5  # the checks mix one 1-3 frame clip into each small batch
    rows = staticmethod(gemma3n_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return gemma3n_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return gemma3n_flops(config, lengths)

    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """The extractor with ``Gemma3nProcessor``'s defaults (``padding="longest"``, ``pad_to_multiple_of=128``,
        ``max_length=480000``, truncation) on each 30 s piece of the clip (one piece up to 30 s): the pieces'
        features end to end, ``[1, F, n_mels]``, and their valid frames (the masks' sums)."""
        outputs = [
            extractor(piece, return_tensors="pt") for piece in np.split(wav, range(MAX_LENGTH, len(wav), MAX_LENGTH))
        ]
        features = torch.cat([out["input_features"] for out in outputs], dim=1)
        return features, sum(int(out["input_features_mask"].sum()) for out in outputs)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF as a user runs a batch (bench's HF column): every audio (a clip, or a 30 s piece of a longer one)
        in ONE ``Gemma3nModel.get_audio_features`` call with the processor's mask, inverted as
        ``Gemma3nModel.forward`` passes it; rows where the output ``audio_mel_mask`` is False."""
        check_geometry(encoder)
        audios, audio_frames = hf_windows(input_features, frames)
        valid = valid_rows(audios.shape[1], audio_frames.to(audios.device))  # the processor's input_features_mask
        out = Gemma3nModel.get_audio_features(Gemma3nTowerHost(encoder), audios, ~valid)
        return out.last_hidden_state[~out.audio_mel_mask]

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's model takes time-major features ``[B, F, n_mels]`` (contaudio's layout) and the valid frames."""
        return mel, lengths

    def hf_alone(self, encoder: PreTrainedModel, features: torch.Tensor, frames: int) -> torch.Tensor:
        """One clip ``[1, F, n_mels]`` as HF's processor and model handle it: each 30 s piece its own call."""
        pieces = features[:, :frames].split(WINDOW_FRAMES, dim=1) if frames else (features[:, :0],)
        return torch.cat([self.hf_encode(encoder, piece, torch.tensor([piece.shape[1]])) for piece in pieces])

    def oracle(self, encoder: PreTrainedModel, extractor: FeatureExtractionMixin, wav: np.ndarray) -> OracleRows:
        """HF's answer for one clip: its extractor, then its model on each 30 s piece alone (one audio per call)."""

        def ask() -> torch.Tensor:
            features, frames = self.hf_inputs(extractor, wav)
            return self.hf_alone(encoder, features.to(encoder.device, encoder.dtype), frames)

        return ask_hf(ask)

    def oracle_from_mel(self, encoder: PreTrainedModel, mel: torch.Tensor) -> OracleRows:
        return ask_hf(lambda: self.hf_alone(encoder, mel[None].to(encoder.device, encoder.dtype), mel.shape[0]))

    # ------------------------------------------------------------------------------- returns="hidden_states"
    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        return gemma3n_hidden_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        return gemma3n_hidden_forward(encoder, mel, lengths, layers)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """HF's forward on each clip's 30 s pieces, each alone (:func:`hf_conformer_states`): ``[len(layers), sum
        rows, hidden_size]``. HF's ``output_hidden_states`` holds none of these states (see the module's notes)."""
        check_geometry(encoder)
        pieces = [
            piece[None]
            for clip, count in zip(input_features, frames.tolist(), strict=True)
            for piece in (clip[:count].split(WINDOW_FRAMES) if count else (clip[:0],))
        ]
        return torch.cat([hf_conformer_states(encoder, piece, layers) for piece in pieces], dim=-2)


# ------------------------------------------------------------------------------------------------ returns="lm"
# Gemma3nProcessor's audio_seq_length default: the soft tokens it writes for every audio (= the model config's
# audio_soft_tokens_per_image and the tower's rows for a whole 30 s window, 188)
SOFT_TOKENS_PER_AUDIO: int = inspect.signature(Gemma3nProcessor.__init__).parameters["audio_seq_length"].default
SOFT_TOKENS_KEY = "audio_soft_tokens_per_image"
# The named special tokens Gemma3nProcessor reads from its tokenizer (the checkpoints' own strings)
PROCESSOR_TOKENS = {
    "boa_token": "<start_of_audio>",
    "audio_token": "<audio_soft_token>",
    "eoa_token": "<end_of_audio>",
    "boi_token": "<start_of_image>",
    "image_token": "<image_soft_token>",
    "eoi_token": "<end_of_image>",
}
PADDING_ROWS_PER_AUDIO = 1  # HF embeds its padding token once per forward call, needed or not
LM_WEIGHT_LAYOUTS: tuple[dict[str, str], ...] = (
    {"model.audio_tower.": "audio_tower.", "model.embed_audio.": "embed_audio."},  # Gemma3nForConditionalGeneration
    {"audio_tower.": "audio_tower.", "embed_audio.": "embed_audio."},  # a Gemma3nModel saved alone
)


def gemma3n_lm_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Soft tokens the model feeds its LM for ``M`` mel frames: 188 per 30 s piece, ``188 * ceil(M / 2997)``.

    A clip of <= 30 s is one audio: the processor writes 188 placeholders and the model fills them with
    ``embed_audio`` of the tower's ``ceil(M / 16)`` rows, then its padding embedding. A longer clip
    (``long_clip="windows"``) is one audio per 30 s piece. No frame (<= 512 samples): no row (HF raises).

    >>> [gemma3n_lm_rows(m) for m in (0, 1, 2997, 2998, 5994)]
    [0, 188, 188, 376, 376]
    >>> gemma3n_lm_rows(torch.tensor([0, 16, 3000])).tolist()
    [0, 188, 376]
    """
    return ceil_div(mel_len, WINDOW_FRAMES) * SOFT_TOKENS_PER_AUDIO


class Gemma3nAudioModel(Gemma3nPreTrainedModel):
    """The audio half of ``Gemma3nModel``: its ``audio_tower`` and ``embed_audio`` under the checkpoint's own names.

    Built from the whole ``Gemma3nConfig`` (``embed_audio`` reads ``audio_config`` and the LM width
    ``text_config.hidden_size``; the padding token is ``text_config.vocab_size - 1``); the LM and the vision
    tower are never built.
    """

    def __init__(self, config: Gemma3nConfig) -> None:
        super().__init__(config)
        self.audio_tower = Gemma3nAudioEncoder(config.audio_config)
        self.embed_audio = Gemma3nMultimodalEmbedder(config.audio_config, config.text_config)
        self.post_init()


def padding_embedding(module: PreTrainedModel) -> torch.Tensor:
    """The embedding ``Gemma3nModel.forward`` fills an audio's unused soft tokens with: ``embed_audio`` of id
    ``text vocab_size - 1`` (the last audio-vocabulary token), HF's own call: ``[D]``."""
    device = module.embed_audio.embedding.weight.device
    token = torch.tensor([[module.config.text_config.vocab_size - 1]], device=device)
    return module.embed_audio(input_ids=token)[0, 0]


def soft_token_slots(frames: torch.Tensor) -> torch.Tensor:
    """Where each audio's tower rows go among its 188 soft tokens: ``frames (K,)`` of each audio -> ``(sum rows,)``
    indices into the ``K * 188`` soft tokens (an audio's rows first, in order; the rest is padding).

    >>> soft_token_slots(torch.tensor([16, 33])).tolist()
    [0, 188, 189, 190]
    """
    audio = torch.repeat_interleave(torch.arange(len(frames)), gemma3n_window_rows(frames))
    first = torch.nn.functional.pad(gemma3n_window_rows(frames).cumsum(0)[:-1], (1, 0))
    return audio * SOFT_TOKENS_PER_AUDIO + torch.arange(len(audio)) - first[audio]


def gemma3n_lm_forward(module: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """What the model feeds its LM for each clip of a padded batch, as for the clip alone: ``[sum lm rows, D]``.

    The tower's rows (:func:`gemma3n_forward`), ``embed_audio`` on them (HF's module), then each audio (a clip,
    or a 30 s piece of a longer one) filled up to 188 soft tokens with :func:`padding_embedding`.
    """
    lengths = check_lengths(mel, lengths)
    soft = module.embed_audio(inputs_embeds=gemma3n_forward(module.audio_tower, mel, lengths))  # [N, D]
    frames, _, _ = chunk_frames_per_clip(lengths, WINDOW_FRAMES)  # (K,) the frames of every audio
    total = len(frames) * SOFT_TOKENS_PER_AUDIO
    is_row = torch.zeros(total, dtype=torch.bool)
    is_row[soft_token_slots(frames)] = True
    source = torch.empty(total, dtype=torch.long)  # soft token -> row of [soft; padding]
    source[is_row] = torch.arange(soft.shape[0])
    source[~is_row] = soft.shape[0]
    rows = torch.cat([soft, padding_embedding(module)[None].to(soft.dtype)])
    return rows.index_select(0, to_device(source, rows.device))


def gemma3n_lm_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of ``returns="lm"`` over clips of ``lengths`` mel frames, each audio (30 s piece) as HF runs it
    alone: the tower (:func:`gemma3n_flops`) and ``embed_audio``'s ``Linear(d, D)`` on its ``ceil(M / 16)`` rows and
    on the one padding token HF embeds per call. ``config``: the model's (``audio_config``, ``text_config``)."""
    audio, text = setting(config, "audio_config"), setting(config, "text_config")
    d, width = int(setting(audio, "hidden_size")), int(setting(text, "hidden_size"))
    frames, _, _ = chunk_frames_per_clip(torch.as_tensor(lengths), WINDOW_FRAMES)
    projected = int(gemma3n_window_rows(frames).sum()) + PADDING_ROWS_PER_AUDIO * len(frames)
    return gemma3n_flops(audio, lengths) + float(FLOPS_PER_MAC * projected * d * width)


class PlaceholderEmbedding(nn.Module):
    """Stands in for the LM's token embedding in :class:`Gemma3nModelHost`: a row of ones for the audio placeholder
    id, zeros for any other id (HF finds the placeholders by comparing rows with the placeholder's)."""

    def __init__(self, audio_token_id: int, width: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.audio_token_id, self.width, self.dtype = audio_token_id, width, dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.audio_token_id)[..., None].to(self.dtype).expand(*input_ids.shape, self.width)


class InputsEmbedsRecorder(nn.Module):
    """Stands in for the LM in :class:`Gemma3nModelHost`: its output's ``last_hidden_state`` is the
    ``inputs_embeds`` the model hands it (the audio soft tokens scattered in)."""

    def forward(self, inputs_embeds: torch.Tensor, **_: Any) -> BaseModelOutputWithPast:
        return BaseModelOutputWithPast(last_hidden_state=inputs_embeds)


class Gemma3nModelHost(nn.Module):
    """Runs HF's own ``Gemma3nModel.forward`` on our ``audio_tower`` and ``embed_audio`` without the LM.

    The padding of each audio to its 188 soft tokens lives inline in that forward (no HF method does it alone),
    so the oracle runs the forward itself, the smallest HF path that executes it. ``Gemma3nModel`` cannot be
    built here: its vision tower needs timm, and its LM a 262,400-row vocabulary on the real cards. The host
    holds what the forward reads: our modules, the model config, HF's own ``get_audio_features`` and
    ``get_placeholder_mask``, and stand-ins for the text side (:class:`PlaceholderEmbedding`,
    :class:`InputsEmbedsRecorder`) whose rows at the placeholders are never kept.
    """

    def __init__(self, module: PreTrainedModel) -> None:
        super().__init__()
        self.audio_tower, self.embed_audio, self.config = module.audio_tower, module.embed_audio, module.config
        self.vocab_size = module.config.text_config.vocab_size  # as Gemma3nModel.__init__ sets it
        self.language_model = InputsEmbedsRecorder()
        width = module.config.text_config.hidden_size
        self.embed_tokens = PlaceholderEmbedding(module.config.audio_token_id, width, module.dtype)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    # HF's own methods, looked up at each call (so that a patched transformers is the one judged)
    def get_audio_features(self, *args: Any, **kwargs: Any) -> Any:
        return Gemma3nModel.get_audio_features(self, *args, **kwargs)

    def get_placeholder_mask(self, *args: Any, **kwargs: Any) -> Any:
        return Gemma3nModel.get_placeholder_mask(self, *args, **kwargs)


def hf_soft_tokens(
    module: PreTrainedModel, input_features: torch.Tensor, features_mask: torch.Tensor, input_ids: torch.Tensor
) -> torch.Tensor:
    """HF's ``Gemma3nModel.forward`` (:class:`Gemma3nModelHost`) on audios ``[K, F, n_mels]`` with the processor's
    ``input_features_mask [K, F]`` (True = valid) and a prompt ``input_ids [K, P]`` in the model's ids: the rows it
    hands its LM at the audio placeholders, ``[placeholders, D]``. HF checks itself that the placeholders and its
    padded audio rows agree in number."""
    host = Gemma3nModelHost(module)
    ids = input_ids.to(input_features.device)
    out = Gemma3nModel.forward(
        host,
        inputs_embeds=host.get_input_embeddings()(ids),
        input_features=input_features,
        input_features_mask=features_mask.to(input_features.device).bool(),
    )
    return out.last_hidden_state[ids == module.config.audio_token_id]


@lru_cache(maxsize=1)
def gemma3n_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny tokenizer (:func:`~contaudio.encoders.tokenizers.tiny_tokenizer`) naming the special tokens
    ``Gemma3nProcessor`` reads (``tokenizer.audio_token``, ``.boa_token``, ... and their ids)."""
    tiny = tiny_tokenizer(list(PROCESSOR_TOKENS.values()))
    return PreTrainedTokenizerFast(
        tokenizer_object=tiny.backend_tokenizer,
        unk_token=tiny.unk_token,
        pad_token=tiny.pad_token,
        extra_special_tokens=PROCESSOR_TOKENS,
    )


def gemma3n_processor(extractor: FeatureExtractionMixin) -> ProcessorMixin:
    """``Gemma3nProcessor`` around the checkpoint's ``extractor`` and :func:`gemma3n_tokenizer`, its defaults
    otherwise (``audio_seq_length=188``); its image processor (required, unused) is Siglip's PIL one."""
    from transformers import SiglipImageProcessorPil  # PIL: only this oracle needs it

    return Gemma3nProcessor(extractor, SiglipImageProcessorPil(), gemma3n_tokenizer())


def processor_audios(processor: ProcessorMixin, wav: np.ndarray) -> list[tuple[BatchFeature, int]]:
    """The processor on a prompt holding each audio the clip is given as, alone: its output and its placeholder count.

    A clip of <= 30 s is one audio; a longer one one audio per 30 s piece (HF's processor would cut it at 30 s;
    contaudio gives every piece its own audio), except a last piece too short for one frame of HF's extractor
    (<= 512 samples past the last whole 30 s): it adds no frame to the clip, and HF's processor, given the clip,
    cuts it off with its truncation.
    """
    audios = []
    for index, piece in enumerate(np.split(wav, range(MAX_LENGTH, len(wav), MAX_LENGTH))):
        out = processor(text=processor.audio_token, audio=piece, return_tensors="pt")
        if index and not out["input_features_mask"].any():
            continue
        audios.append((out, int((out["input_ids"] == processor.audio_token_id).sum())))
    return audios


class Gemma3nLM(Gemma3n):
    """``returns="lm"``: the soft tokens ``Gemma3nModel`` scatters into its LM's input for each clip alone (see the
    module's notes): 188 per audio, ``text_config.hidden_size`` wide; the tower plus ``embed_audio`` are built and
    loaded (``model.audio_tower.*``, ``model.embed_audio.*``), never the LM."""

    mode = "lm"
    weight_prefixes = LM_WEIGHT_LAYOUTS
    encoder_class = Gemma3nAudioModel
    config_class = Gemma3nConfig
    returns = (
        "the 188 soft tokens per clip (per 30 s piece) Gemma3nModel feeds its LM: embed_audio of the tower's valid "
        "rows, then embed_audio(text vocab_size - 1) up to 188; LM width"
    )
    oracle_path = (
        "Gemma3nProcessor (card's extractor, tiny tokenizer) on each 30 s piece -> Gemma3nModel.forward on our "
        "audio_tower and embed_audio (LM stood in for), the inputs_embeds rows it hands its LM at the placeholders"
    )

    rows = staticmethod(gemma3n_lm_rows)

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The model config (its ``audio_config`` = ``encoder_config``; the vision config left out: never built)."""
        if model_config is None:
            raise ValueError(
                "gemma3n: this card or checkpoint has no model_config: returns='lm' needs the model's config "
                f"(text_config.hidden_size and vocab_size, {SOFT_TOKENS_KEY}, audio_token_id) for embed_audio and "
                "its padding; add a 'model_config' to the card, or use returns='tower'"
            )
        soft_tokens = model_config.get(SOFT_TOKENS_KEY, Gemma3nConfig().audio_soft_tokens_per_image)
        if soft_tokens != SOFT_TOKENS_PER_AUDIO:
            raise ValueError(
                f"gemma3n: the model config's {SOFT_TOKENS_KEY} is {soft_tokens}; contaudio's returns='lm' follows "
                f"Gemma3nProcessor's default of {SOFT_TOKENS_PER_AUDIO} soft tokens per audio; use returns='tower'"
            )
        config = {key: value for key, value in model_config.items() if key not in ("audio_config", "vision_config")}
        return {**config, "audio_config": dict(encoder_config)}

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width ``embed_audio`` projects to (``text_config.hidden_size``) from the module's config."""
        return int(self.config_class.from_dict(encoder_config).text_config.hidden_size)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return gemma3n_lm_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return gemma3n_lm_flops(config, lengths)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF as a user runs a batch: every audio (a clip, or a 30 s piece) in ONE ``Gemma3nModel.forward`` with the
        processor's mask and 188 placeholders each (:func:`hf_soft_tokens`): ``[188 K, D]``."""
        check_geometry(encoder.audio_tower)
        audios, audio_frames = hf_windows(input_features, frames)
        valid = valid_rows(audios.shape[1], audio_frames.to(audios.device))
        prompt = torch.full((audios.shape[0], SOFT_TOKENS_PER_AUDIO), encoder.config.audio_token_id)
        return hf_soft_tokens(encoder, audios, valid, prompt)

    def hf_placeholders(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> int:
        """The audio placeholders ``Gemma3nProcessor`` writes for the clip (:func:`processor_audios`)."""
        return sum(count for _, count in processor_audios(gemma3n_processor(extractor), wav))

    def oracle(self, encoder: PreTrainedModel, extractor: FeatureExtractionMixin, wav: np.ndarray) -> OracleRows:
        """``Gemma3nProcessor`` on each audio of the clip alone (:func:`processor_audios`), then HF's model path
        (:meth:`hf_encode`) on its features and mask, one audio per call: the rows HF hands its LM at the 188
        placeholders, and the number of placeholders the processor wrote (kept when HF's model raises; an error of
        the processor itself is recorded like the model's)."""
        audios: list[tuple[BatchFeature, int]] = []

        def ask() -> torch.Tensor:
            audios.extend(processor_audios(gemma3n_processor(extractor), wav))
            rows = []
            for out, _ in audios:
                features = out["input_features"].to(encoder.device, encoder.dtype)
                rows.append(self.hf_encode(encoder, features, out["input_features_mask"].sum(-1)))
            return torch.cat(rows)

        return replace(ask_hf(ask), placeholders=sum(count for _, count in audios) if audios else None)


Gemma3n.lm_view = Gemma3nLM
