"""Gemma 3n audio tower (``model.audio_tower.*`` of google/gemma-3n-E2B, -E2B-it, -E4B, -E4B-it).

A USM-style conformer over Gemma 3n's own log-mel (:mod:`contaudio.features.gemma3n`, 100 frames/s):
the SSCP subsampler (two ``Conv2d`` with time stride 2 and *reverse-causal* time padding, each with a
cumulative group norm over time, then a linear projection), a stack of conformer blocks (feed-forward,
chunked local self-attention over 12 rows with 12 rows of left context and none to the right,
a causal depthwise ``Conv1d``, feed-forward, RMSNorm), then every ``conf_reduction_factor``-th (4th)
row: 25 rows/s of ``hidden_size`` (1536). ``Gemma3nModel.get_audio_features`` then passes the rows
through ``embed_audio`` (RMSNorm -> ``Linear(1536, LM width)`` -> RMSNorm), the LM's adaptor, whose
weights live outside the tower (``model.embed_audio.*``) like Qwen2-Audio's projector.

Everything after the SSCP is causal, and the SSCP convs read 2 frames *past* each row (their time
padding is ``(0, kernel - 1)``), so a row depends on the clip up to slightly after it. Alone, HF
zero-pads past the clip's end. In one HF batch a shorter clip differs: the processor gives it 2-3
more frames (:mod:`contaudio.features.gemma3n`), so sometimes one row more, and its last rows read the
batch's padding (the log-mel of silence, then non-zero conv outputs). contaudio gives every clip its
ALONE result in any batch: :func:`gemma3n_forward` zeroes the padding before each conv, exactly where
HF's own padding is (``tests/encoders/test_gemma3n.py`` shows HF's batched call giving a clip a row more).

Clip limit: ``Gemma3nProcessor`` truncates audio at 480,000 samples (30 s -> 2997 frames -> 188 rows)
and reserves a FIXED ``audio_seq_length`` of 188 soft tokens per clip whatever its length; the model
pads the encoder's rows up to 188 with the embedding of its last audio-vocabulary token (and fails on
more). contaudio returns the clip's own valid rows (``ceil(M / 16)``, per the encoder's mask), the
continuous-feature answer (a caller reproducing HF's prompt runs ``embed_audio`` on them and fills the
rest of its 188 positions with ``embed_audio(input_ids=vocab_size - 1)``, as the model does). A longer
clip raises (``long_clip="raise"``) or is encoded as consecutive 30 s pieces, each exactly as HF's
processor and model handle a 30 s clip, rows concatenated (``long_clip="windows"``): never cut silently.

Returns: the audio tower's valid rows (``get_audio_features(...).last_hidden_state`` where the output
``audio_mel_mask`` is False), 25 per second, ``hidden_size`` wide, before ``embed_audio``.
Oracle: HF's extractor as ``Gemma3nProcessor`` calls it (on each 30 s piece), then
``Gemma3nModel.get_audio_features`` on our tower with the processor's mask inverted as
``Gemma3nModel.forward`` passes it, one audio per call, rows by the output ``audio_mel_mask``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nModel

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import OracleRows, ask_hf, select_rows
from contaudio.encoders.packed import check_lengths, mel_chunks, to_device
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
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


def gemma3n_window_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Gemma 3n tower gives one clip of ``M <= 2997`` frames: ``ceil(M / 16)``.

    Each SSCP conv (time stride 2, padding ``(0, kernel - 1)``) keeps ``(T - 1) // 2 + 1`` rows; the
    conformer output keeps every 4th: ``rows = ((((M - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 4 + 1``, which
    is ``ceil(M / 16)`` (0 for no frame). The encoder's output mask marks exactly these rows valid.

    >>> [gemma3n_window_rows(m) for m in (0, 1, 16, 17, 32, 33, 100, 2997)]
    [0, 1, 1, 2, 2, 3, 7, 188]
    """
    rows = mel_len
    for _ in range(CONV_LAYERS):
        rows = conv_out(rows, CONV_TIME_STRIDE)
    return conv_out(rows, REDUCTION_FACTOR)


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


def gemma3n_forward(encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The Gemma 3n tower on a padded batch, each clip as HF gives it alone: ``[sum rows, hidden_size]``.

    mel: ``[B, M_max, n_mels]``; lengths: ``(B,)`` valid frames (read on CPU). Each clip is cut into
    its 30 s windows (2997 frames, see :func:`gemma3n_rows`); the windows run through
    :func:`encode_windows` in zero-padded passes of similar length (:func:`length_groups`: one pass when
    lengths are within 25 %; HF's own batched call pads every clip to the longest), and their rows are
    returned clip by clip.
    """
    lengths = check_lengths(mel, lengths)
    check_geometry(encoder)
    windows, frames = mel_chunks(mel, lengths, WINDOW_FRAMES)  # [K, n_mels, W], [K] (CPU)
    rows: list[torch.Tensor | None] = [None] * len(frames)
    for group in length_groups(frames):
        width = int(frames[group].max())
        chosen = windows.index_select(0, to_device(group, windows.device))[:, :, :width].transpose(1, 2)
        flat = encode_windows(encoder, chosen, frames[group])
        for index, piece in zip(group.tolist(), flat.split(gemma3n_window_rows(frames[group]).tolist()), strict=True):
            rows[index] = piece
    return torch.cat(rows)


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
    returns = (
        "audio tower rows the encoder's mask marks valid (25 Hz, hidden_size wide, before embed_audio); "
        "not padded to the processor's fixed 188 soft tokens"
    )
    oracle_path = (
        "Gemma3nAudioFeatureExtractor as Gemma3nProcessor calls it (each 30 s piece) -> "
        "Gemma3nModel.get_audio_features(features, ~input_features_mask) one audio per call, "
        "rows where its audio_mel_mask is False"
    )

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
