"""Qwen3-Omni audio tower (``thinker.audio_tower.*`` of Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner).

The mel is cut into 100-frame chunks; three ``k3 s2`` Conv2d run per chunk (13 rows per full
chunk), attention runs within windows of ``n_window_infer`` frames, then
``ln_post -> proj1 -> act -> proj2`` to ``output_dim``. The tower takes any length.

One quirk of HF's forward decides what "the" result of a clip is: the chunks of a call are
right-padded to the longest chunk *in the call*, and unlike Qwen2.5-Omni the conv stack does not
re-mask the padding between its three convs, so the padded positions (``gelu(bias)``, not zero)
leak into the last row(s) of a shorter chunk. Every clip longer than one chunk has a full chunk,
so its tail is always padded to 100 frames; but a clip of < 100 frames (< 1 s) gives different
features alone than next to a longer clip in one HF call. The one-clip-per-call result is the
reference (what the model gives a single audio), and :func:`packed_forward` keeps it in any
batch while running the layer stack once for the whole batch.

Features: the clip as ``Qwen3OmniMoeProcessor`` gives it alone (as at inference, one audio per prompt).
The processor calls Whisper's extractor with ``padding=True`` (pad to the longest clip *of the call*), so a
clip alone is not padded: ``N // 160`` frames with a reflected end (the STFT's last frame dropped), and
a clip of <= 200 samples is refused (the reflection needs more; HF's extractor raises inside ``torch.stft``).
In a batch every clip but the longest would get ``ceil(N / 160)`` frames and zeros past its end: a count
that depends on the batch, so contaudio takes the clip alone (:meth:`Qwen3Omni.adapt_features`).

Modes (``returns=``):

- ``"lm"`` (the default) and ``"tower"`` are one: the rows of ``thinker.get_audio_features(...)`` for the clip
  alone (13 per second, projected to the LM width), which the thinker splices into its LM as they are, as many
  as the audio placeholders the processor puts into a prompt for the clip.
- ``"hidden_states"``: HF's ``output_hidden_states`` entries of the tower: its layer stack's rows (13 per full
  chunk, ``d_model`` wide; 0 the first layer's input, ``i`` layer ``i``'s output, the last one before ``ln_post``:
  ``capture_outputs(tie_last_hidden_states=False)`` in transformers 5.14 and 5.25 alike).

Oracle: HF's extractor called with the processor's own default audio kwargs, read from transformers
(:func:`processor_audio_kwargs`: ``padding=True, truncation=False``) on the clip alone, then
the thinker's ``get_audio_features`` (``Qwen3OmniMoeThinkerModel``'s; ``Qwen3OmniMoeThinkerForConditionalGeneration``'s
before transformers 5.21) on our tower, one clip per call (``output_hidden_states=True`` for the hidden states);
the placeholder count is HF's ``Qwen3OmniMoeProcessor``'s for a prompt holding the clip alone, built for text and
audio (:func:`qwen3_omni_processor`) on the checkpoint's extractor and a tiny tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, WhisperFeatureExtractor
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeProcessorKwargs,
)

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, block_macs, config_value
from contaudio.encoders.oracle import thinker_audio_rows, thinker_get_audio_features, thinker_hidden_states
from contaudio.encoders.packed import (
    AttentionKernel,
    attention_kernel,
    check_lengths,
    chunk_frames_per_clip,
    conv2d_bf16_safe,
    run_windowed_stack,
    to_device,
    windowed_hidden_states,
)
from contaudio.encoders.processors import audio_only
from contaudio.encoders.registry import EncoderFamily, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features import FeatureConfig, Featurizer
from contaudio.lengths import ceil_div, conv_out

CHUNK_FRAMES = 100  # 2 * n_window (50): the conv stack runs on 1 s chunks
CONV_STRIDE = 2  # each of the three Conv2d halves time (and frequency)
CONV_LAYERS = 3  # conv2d1..3, each k3 s2 p1 over (mel, time)
CONV2D_TAPS = 9  # 3 x 3 kernel
QWEN3_OMNI_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=300)
PROCESSOR_ONLY_AUDIO_KWARGS = ("n_window",)  # audio kwargs the processor reads itself, never passes its extractor
# the tokens Qwen3OmniMoeProcessor reads off its tokenizer by name (Qwen3-Omni's tokenizer: Qwen's special tokens)
PROCESSOR_TOKENS = {"audio_token": "<|audio_pad|>", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                    "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
                    "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}  # fmt: skip


def processor_audio_kwargs() -> dict[str, Any]:
    """The keyword arguments ``Qwen3OmniMoeProcessor`` passes its feature extractor by default, read from transformers.

    Declared as the processor's ``audio_kwargs`` class attribute since transformers 5.2x, as
    ``Qwen3OmniMoeProcessorKwargs._defaults["audio_kwargs"]`` before (5.14); ``n_window`` is the processor's own.

    >>> processor_audio_kwargs()["padding"], processor_audio_kwargs()["truncation"]
    (True, False)
    """
    declared = getattr(Qwen3OmniMoeProcessor, "audio_kwargs", None)
    if declared is None:
        declared = getattr(Qwen3OmniMoeProcessorKwargs, "_defaults", {}).get("audio_kwargs")
    if not declared:
        raise RuntimeError(
            "transformers' Qwen3OmniMoeProcessor declares no default audio kwargs where contaudio looks (its "
            "audio_kwargs attribute, or Qwen3OmniMoeProcessorKwargs._defaults); this transformers release lays "
            "its processor out differently: update contaudio.encoders.qwen3_omni.processor_audio_kwargs"
        )
    return {key: value for key, value in declared.items() if key not in PROCESSOR_ONLY_AUDIO_KWARGS}


def qwen3_omni_processor(extractor: WhisperFeatureExtractor) -> Qwen3OmniMoeProcessor:
    """HF's ``Qwen3OmniMoeProcessor`` for text and audio (:func:`~contaudio.encoders.processors.audio_only`) around
    the checkpoint's extractor and a tiny tokenizer holding the tokens it reads by name (:data:`PROCESSOR_TOKENS`)."""
    tokenizer = tiny_tokenizer(list(PROCESSOR_TOKENS.values()), named=PROCESSOR_TOKENS)
    return audio_only(Qwen3OmniMoeProcessor, extractor, tokenizer)


def processor_placeholders(processor: Qwen3OmniMoeProcessor, wav: np.ndarray) -> int:
    """The audio placeholders ``processor`` writes into a prompt holding one audio, the clip ``wav`` alone."""
    out = processor(text=processor.audio_token, audio=[np.asarray(wav, dtype=np.float32)], return_tensors="pt")
    return int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)).sum())


def conv_stack_rows(frames: IntOrTensor) -> IntOrTensor:
    """Rows three ``k3 s2 p1`` convs leave of ``r`` frames: ``f(r) = conv_out(conv_out(conv_out(r)))``, ``f(0) = 0``.

    >>> [conv_stack_rows(r) for r in (0, 1, 8, 9, 100)]
    [0, 1, 1, 2, 13]
    """
    for _ in range(CONV_LAYERS):
        frames = conv_out(frames, CONV_STRIDE)
    return frames


def qwen3_omni_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the Qwen3-Omni audio tower returns for ``M`` mel frames.

    The mel is cut into chunks of 100 frames (the last one shorter); the conv stack turns a
    chunk of ``r`` frames into ``f(r)`` rows (:func:`conv_stack_rows`, 13 for a full chunk):
    ``rows = f(M % 100) + 13 * (M // 100)`` with
    ``f(r) = ((((r - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 2 + 1`` and ``f(0) = 0``.

    >>> [qwen3_omni_rows(m) for m in (0, 1, 2, 8, 9, 99, 100, 101, 199, 200, 450)]
    [0, 1, 1, 1, 2, 13, 13, 14, 26, 26, 59]
    """
    return conv_stack_rows(mel_len % CHUNK_FRAMES) + conv_stack_rows(CHUNK_FRAMES) * (mel_len // CHUNK_FRAMES)


def check_chunking(encoder: PreTrainedModel) -> None:
    """The length rule assumes 100-frame chunks (``n_window=50``) and windows of whole chunks."""
    config = encoder.config
    if 2 * config.n_window != CHUNK_FRAMES or config.n_window_infer % CHUNK_FRAMES:
        raise ValueError(
            f"Qwen3-Omni tower with n_window={config.n_window}, n_window_infer={config.n_window_infer}: "
            f"contaudio's length rule needs chunks of {CHUNK_FRAMES} frames "
            f"(n_window={CHUNK_FRAMES // 2}) and n_window_infer a multiple of {CHUNK_FRAMES}"
        )


# CPU: chunks per conv call. conv2d1's output is [chunks, 480, 64, 50] (3 MB per chunk in bf16); HF's
# conv_chunksize (500) lets one call of 120 chunks allocate ~370 MB per activation, and 4 x 30 s clips
# ran 0.7x HF (which convolves clip by clip). Slices of 32 chunks keep each activation ~100 MB.
CPU_CONV_CHUNKS = 32


def qwen3_conv_widths(lengths: torch.Tensor, clip_of_chunk: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Width each chunk is zero-padded to before the conv stack, as HF's forward on the clip ALONE pads it.

    A clip of >= ``chunk_frames`` frames has a full chunk, so all its chunks are padded to
    ``chunk_frames`` (HF pads to the longest chunk of the call); a shorter clip is one
    unpadded chunk. The padding matters: the convs do not re-mask it, so a padded
    tail chunk's last rows see ``gelu(bias)`` from the padding. Returns ``(num_chunks,)``.

    >>> qwen3_conv_widths(torch.tensor([250, 37]), torch.tensor([0, 0, 0, 1]), 100).tolist()
    [100, 100, 100, 37]
    """
    return lengths.clamp(max=chunk_frames)[clip_of_chunk]


def qwen3_window_rows(clip_rows: torch.Tensor, window_rows: int) -> torch.Tensor:
    """Split each clip's rows into attention windows of ``window_rows`` (the last shorter): ``(num_windows,)``.

    clip_rows: ``(B,)`` rows per clip (each >= 1).

    >>> qwen3_window_rows(torch.tensor([60, 13, 5]), 26).tolist()
    [26, 26, 8, 13, 5]
    """
    full = clip_rows // window_rows
    tail = clip_rows % window_rows
    counts = full + (tail > 0).long()
    windows = torch.full((int(counts.sum()),), window_rows, dtype=torch.long)
    last = counts.cumsum(0) - 1
    has_tail = tail > 0
    windows[last[has_tail]] = tail[has_tail]
    return windows


def qwen3_conv_stack(encoder: nn.Module, chunks: torch.Tensor) -> torch.Tensor:
    """``[n, n_mels, W]`` zero-padded chunks -> ``[n, t, d]``: three conv2d + GELU, conv_out, positions.

    Runs in slices of ``encoder.conv_chunksize`` chunks (all at once without one), as HF does;
    narrow bf16 convs on CPU run in float32 (:func:`conv2d_bf16_safe`).
    """
    outputs = []
    per_call = getattr(encoder, "conv_chunksize", len(chunks)) if chunks.device.type == "cuda" else CPU_CONV_CHUNKS
    for part in chunks.unsqueeze(1).split(per_call, dim=0):
        for conv in (encoder.conv2d1, encoder.conv2d2, encoder.conv2d3):
            part = F.gelu(conv2d_bf16_safe(conv, part))
        outputs.append(part)
    embed = torch.cat(outputs)  # [n, channels, freq, t]
    n, channels, freq, steps = embed.shape
    embed = encoder.conv_out(embed.permute(0, 3, 1, 2).reshape(n, steps, channels * freq))
    return embed + encoder.positional_embedding.positional_embedding[:steps].unsqueeze(0).to(embed.dtype)


def packed_forward(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Qwen3-Omni audio tower on a padded batch, every clip as HF's forward gives it ALONE: ``[sum rows, output_dim]``.

    mel: ``[B, M_max, n_mels]``; lengths: ``(B,)`` valid frames (any device; read on CPU).
    The conv stack runs once per chunk width (one call for all clips of >= 100 frames,
    one per distinct shorter length, see :func:`qwen3_conv_widths`); then the layers run
    ONCE over the packed rows of the whole batch, attending within windows of
    ``13 * n_window_infer / 100`` rows per clip; then ln_post, proj1, act, proj2.
    """
    hidden = aut_layers(encoder, mel, lengths, qwen3_conv_widths)
    return encoder.proj2(encoder.act(encoder.proj1(encoder.ln_post(hidden))))


ConvWidths = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class AuTStackInput:
    """The layer stack's input for a batch: packed rows ``[N, d_model]`` (clip by clip, chunk by chunk) and
    the attention windows they split into, ``(num_windows,)`` rows each, with the kernel that runs them."""

    hidden: torch.Tensor
    window_rows: torch.Tensor
    kernel: AttentionKernel


def aut_layers(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, conv_widths: ConvWidths) -> torch.Tensor:
    """The AuT tower (Qwen3-Omni, Qwen3-ASR) up to its last layer: ``[B, M_max, n_mels]`` -> ``[sum rows, d_model]``.

    ``conv_widths(lengths, clip_of_chunk, chunk_frames)`` gives the width each 100-frame chunk is
    zero-padded to before the conv stack (the family's HF forward decides it); each width
    group runs the conv stack once, then the layers run ONCE over the packed rows of the batch.
    """
    stack = aut_embed(encoder, mel, lengths, conv_widths)
    return run_windowed_stack(encoder.layers, stack.hidden, stack.window_rows, stack.kernel)


def aut_hidden_states(
    encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, conv_widths: ConvWidths, layers: tuple[int, ...]
) -> torch.Tensor:
    """The AuT tower's hidden states ``layers`` (HF's ``output_hidden_states`` indices: 0 the first layer's input,
    ``i`` layer ``i``'s output) on a padded batch, the layers run only up to the deepest one:
    ``[len(layers), sum rows, d_model]`` (13 rows per full chunk, as the tower's; no ``ln_post`` or head)."""
    stack = aut_embed(encoder, mel, lengths, conv_widths)
    return windowed_hidden_states(encoder.layers, stack.hidden, stack.window_rows, stack.kernel, layers)


def aut_embed(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, conv_widths: ConvWidths) -> AuTStackInput:
    """The AuT conv stack on every chunk of a padded batch, packed: the first layer's input and its windows.

    Each group of chunks zero-padded to one width (``conv_widths``) runs the conv stack once; the rows
    are put back in packed (clip, chunk, row) order; the windows span ``13 * n_window_infer / 100``
    rows of a clip (the last one shorter).
    """
    lengths = check_lengths(mel, lengths)
    check_chunking(encoder)
    chunk_frames = CONV_STRIDE * encoder.n_window
    frames, clip_of_chunk, index_in_clip = chunk_frames_per_clip(lengths, chunk_frames)
    widths = conv_widths(lengths, clip_of_chunk, chunk_frames)
    chunk_rows = qwen3_omni_rows(frames)  # (num_chunks,): a chunk of <= 100 frames is a clip of its own
    row_offsets = F.pad(chunk_rows.cumsum(0), (1, 0))  # where each chunk's rows start in the packed order
    mel = mel.to(encoder.conv2d1.weight.dtype)
    pieces, destinations = [], []
    for width in widths.unique().tolist():
        members = (widths == width).nonzero().flatten()  # chunks padded to this width, in packed order
        starts = index_in_clip[members] * chunk_frames
        grid = torch.arange(width)[None, :]  # [1, W]
        frame_index = (starts[:, None] + grid).clamp(max=mel.shape[1] - 1)  # [n, W]
        valid = grid < frames[members][:, None]  # [n, W]
        clips = clip_of_chunk[members]
        chunks = mel[to_device(clips, mel.device)[:, None], to_device(frame_index, mel.device)]  # [n, W, n_mels]
        chunks = torch.where(to_device(valid, mel.device)[:, :, None], chunks, 0.0).transpose(1, 2)
        embed = qwen3_conv_stack(encoder, chunks)  # [n, t, d]
        keep = (torch.arange(embed.shape[1]) < chunk_rows[members][:, None]).flatten()  # [n * t], on CPU
        pieces.append(embed.flatten(0, 1).index_select(0, to_device(keep.nonzero().flatten(), embed.device)))
        destinations.append((row_offsets[members][:, None] + torch.arange(embed.shape[1])).flatten()[keep])
    order = torch.cat(destinations).argsort()  # group order -> packed (clip, chunk, row) order
    hidden = torch.cat(pieces).index_select(0, to_device(order, mel.device))  # [N, d]
    window = qwen3_omni_rows(chunk_frames) * (encoder.n_window_infer // chunk_frames)
    window_rows = qwen3_window_rows(qwen3_omni_rows(lengths), window)
    return AuTStackInput(hidden, window_rows, attention_kernel(encoder.config, hidden.device, hidden.dtype))


def qwen3_omni_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the Qwen3-Omni audio tower over clips of ``lengths`` mel frames, as it runs.

    :func:`aut_flops` with a clip of ``M < 100`` frames convolved unpadded (one chunk of ``M``)
    and the ``proj1``/``proj2`` head: per valid row ``2 (d^2 + d out)`` more.
    """
    return aut_flops(config, lengths, pad_short_clips=False, projection=True)


def aut_flops(
    config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor, pad_short_clips: bool, projection: bool
) -> float:
    """Matmul FLOPs of an AuT tower (Qwen3-Omni, Qwen3-ASR) over clips of ``lengths`` mel frames, as it runs.

    A clip of ``M >= 100`` frames is ``ceil(M / 100)`` chunks, each padded to 100 frames; a shorter
    clip is one chunk of 100 (``pad_short_clips``) or of ``M``. Per chunk of width ``w``: three
    ``3x3 s2`` Conv2d over (mel, time) with ``C = downsample_hidden_size`` channels, ``F_i x T_i``
    outputs (``2 F1 T1 C 9 + 2 F2 T2 C^2 9 + 2 F3 T3 C^2 9``) and ``conv_out`` (``2 T3 (C F3) d``).
    Per valid row: ``2 L (4 d^2 + 2 d ffn)`` (and ``2 (d^2 + d out)`` with ``projection``); per
    attention window of ``r`` rows and layer ``2 * 2 r^2 d`` (windows of ``13 * n_window_infer / 100`` rows).
    """
    d, ffn = config_value(config, "d_model"), config_value(config, "encoder_ffn_dim")
    layers, n_mels = config_value(config, "encoder_layers"), config_value(config, "num_mel_bins")
    channels = config_value(config, "downsample_hidden_size")
    window = conv_stack_rows(CHUNK_FRAMES) * (config_value(config, "n_window_infer") // CHUNK_FRAMES)
    head = d * d + d * config_value(config, "output_dim") if projection else 0

    def chunk_macs(width: int) -> int:
        freq, steps, macs, in_channels = n_mels, width, 0, 1
        for _ in range(CONV_LAYERS):
            freq, steps = conv_out(freq, CONV_STRIDE), conv_out(steps, CONV_STRIDE)
            macs += freq * steps * in_channels * channels * CONV2D_TAPS
            in_channels = channels
        return macs + steps * channels * freq * d

    macs = 0
    for length in torch.as_tensor(lengths).tolist():
        chunks = ceil_div(length, CHUNK_FRAMES)
        full = length >= CHUNK_FRAMES or pad_short_clips
        macs += chunks * chunk_macs(CHUNK_FRAMES) if full else chunk_macs(length)
        rows = qwen3_omni_rows(length)
        macs += layers * block_macs(rows, d, ffn) + rows * head
        full_windows, rest = divmod(rows, window)
        macs += layers * (full_windows * attention_macs(window, d) + attention_macs(rest, d))
    return float(FLOPS_PER_MAC * macs)


@register
class Qwen3Omni(EncoderFamily):
    name = "qwen3_omni"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "qwen3_omni_moe": ("thinker_config", "audio_config"),
        "qwen3_omni_moe_thinker": ("audio_config",),
        "qwen3_omni_moe_audio_encoder": (),
    }
    weight_prefixes = ("thinker.audio_tower.", "thinker.model.audio_tower.", "audio_tower.", "model.audio_tower.", "")
    encoder_class = Qwen3OmniMoeAudioEncoder
    config_class = Qwen3OmniMoeAudioEncoderConfig
    default_features = QWEN3_OMNI_FEATURES
    returns = "thinker.get_audio_features rows of the clip alone (13 per second, projected to the LM width)"
    oracle_path = (
        "WhisperFeatureExtractor with Qwen3OmniMoeProcessor's default audio kwargs (padding=True: the clip alone, "
        "N // 160 frames), then the thinker's get_audio_features one clip per call (HF's batched call leaks conv "
        "padding into clips < 1 s)"
    )

    head_modules = ("ln_post", "proj1", "act", "proj2")  # after the layer stack (row-wise: rows stay 13 per chunk)

    graph_stack = True  # the layers run through packed.run_windowed_stack
    rows = staticmethod(qwen3_omni_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return packed_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return qwen3_omni_flops(config, lengths)

    def adapt_features(self, features: Featurizer) -> Featurizer:
        """Whisper's log-mel as the processor computes it for a clip alone: unpadded, ``N // 160`` frames."""
        if not isinstance(features, FeatureConfig):
            raise ValueError(
                f"{self.name} is fed by WhisperFeatureExtractor, but the checkpoint's feature extractor is "
                f"{type(features).__name__}; is this a Qwen3-Omni checkpoint?"
            )
        return replace(features, unpadded=True)

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """HF's extractor on the clip alone as ``Qwen3OmniMoeProcessor`` calls it (its default audio kwargs, read
        from transformers: :func:`processor_audio_kwargs`): ``([1, n_mels, F], frames)``, F = frames = ``N // 160``."""
        out = extractor(wav, return_tensors="pt", **processor_audio_kwargs())
        return out["input_features"], int(out["attention_mask"].sum())

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """One ``get_audio_features`` call for the whole batch, as HF runs a batch (bench's HF column)."""
        check_chunking(encoder)
        get_audio_features = thinker_get_audio_features(modeling_qwen3_omni_moe, "Qwen3OmniMoe")
        return thinker_audio_rows(get_audio_features, encoder, input_features, frames)

    def hf_placeholders(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> int:
        """The audio placeholders HF's ``Qwen3OmniMoeProcessor`` writes for the clip alone
        (:func:`qwen3_omni_processor`): the tower's rows are the LM's, so ``"lm"`` and ``"tower"`` both count them."""
        return processor_placeholders(qwen3_omni_processor(extractor), wav)

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """The layer stack's rows: the tower's (:func:`qwen3_omni_rows`), its head being row-wise."""
        return qwen3_omni_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """:func:`aut_hidden_states` with the chunks padded as HF pads them for each clip alone."""
        return aut_hidden_states(encoder, mel, lengths, qwen3_conv_widths, layers)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """The thinker's ``get_audio_features(..., output_hidden_states=True)`` on our tower: the tower's
        ``hidden_states[i]`` (``capture_outputs(tie_last_hidden_states=False)`` in transformers 5.14 and 5.25: the
        last entry is the last layer's output, before ``ln_post``)."""
        check_chunking(encoder)
        get_audio_features = thinker_get_audio_features(modeling_qwen3_omni_moe, "Qwen3OmniMoe")
        return thinker_hidden_states(get_audio_features, encoder, input_features, frames, layers)
