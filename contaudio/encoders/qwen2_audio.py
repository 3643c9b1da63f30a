"""Qwen2-Audio audio tower (``audio_tower.*`` of Qwen/Qwen2-Audio-7B and -7B-Instruct) and its projector.

A Whisper-large encoder with a stride-2 average pool before its final layer norm: one 30 s
window (3000 frames) -> 750 rows of ``d_model`` (1280).

Every clip is padded to its window with the log-mel of silence (see
:mod:`contaudio.encoders.windows`). ``Qwen2AudioModel.forward`` masks the padded rows out of
attention (a bidirectional mask over the ``(M - 1) // 2 + 1`` valid conv rows), so
:func:`masked_window_forward` computes only the valid rows (packed, one pass for the batch) and
keeps the first ``T // 2`` pooled rows: HF's result at the cost of the clip, not of 30 s.

Modes (``returns=``):

- ``"lm"`` (the default, :class:`Qwen2AudioLM`): what ``Qwen2AudioModel.forward`` splices into the LM's input
  for the clip: the tower's pooled rows through the model's ``multi_modal_projector`` (one linear layer, to the
  LM width: 4096 for the 7B models), 25 Hz, ``qwen2_audio_rows(M)`` rows. ``Qwen2AudioProcessor`` writes
  ``((M - 1) // 2 + 1 - 2) // 2 + 1`` audio tokens for a clip of ``M <= 3000`` frames, the same count.
- ``"tower"``: the tower's pooled rows that hold the clip (25 Hz, ``d_model`` wide, before the projector).
- ``"hidden_states"``: HF's ``output_hidden_states`` entries for the clip's ``(M - 1) // 2 + 1`` conv rows per
  window (50 Hz, before the average pool): entry 0 is the first layer's input (GELU convs + positions), entry
  ``i`` layer ``i``'s output. HF (transformers 5.14 to 5.25, ``capture_outputs``) ties its LAST entry to
  ``last_hidden_state``, which for Qwen2-Audio is after the average pool and ``layer_norm``: 750 rows per
  window, not one per conv row, so not a state of the rows the others hold. contaudio's entry ``encoder_layers``
  is the last layer's own output (per conv row, before the pool and the norm): what HF records for it before the
  tie (transformers 5.25 keeps it with ``config.tie_last_hidden_states=False``), and what HF's entry is on the
  encoder built for this mode, whose ``avg_pooler`` and ``layer_norm`` are identities.

Long clips (``long_clip="windows"``): consecutive 30 s windows, each encoded on its own (Qwen2-Audio's processor
has no long-clip path: it truncates at 30 s; contaudio cuts as Voxtral's processor cuts).

Oracle: HF's extractor with the waveform zero-padded to whole 30 s windows (Qwen2-Audio's processor for clips of
<= 30 s), then HF's own ``Qwen2AudioModel.forward`` on our modules (:func:`hf_forward_rows`): its attention mask,
tower call, projector (``"lm"``; an identity otherwise), row selection by ``_get_feat_extract_output_lengths``
and its check that the prompt's audio placeholders match those rows, read where the forward splices them into
the LM's input; ``"hidden_states"`` reads the tower's ``output_hidden_states`` in that same call
(:func:`hf_forward_hidden_states`). ``"lm"`` also counts the placeholders of ``Qwen2AudioProcessor`` itself (the
card's extractor, a tiny tokenizer) for a prompt holding the clip (a longer clip: one audio per 30 s piece).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Qwen2AudioProcessor, WhisperFeatureExtractor
from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioConfig, Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import (
    Qwen2AudioEncoder,
    Qwen2AudioModel,
    Qwen2AudioMultiModalProjector,
    Qwen2AudioPreTrainedModel,
)

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import LanguageModelHost, frame_mask, pick_hidden_states
from contaudio.encoders.packed import (
    AttentionKernel,
    WindowLayout,
    attention_kernel,
    pool_group_starts,
    run_windowed_stack,
    to_device,
    windowed_hidden_states,
)
from contaudio.encoders.registry import PROJECTOR_LAYOUTS, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.encoders.whisper import window_rows_of
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_CONV_STRIDE,
    WINDOW_FRAMES,
    WindowFamily,
    check_window,
    hf_windows,
    split_into_windows,
    whisper_rows,
    whisper_style_flops,
    whole_model_config,
)
from contaudio.lengths import ceil_div, conv_out, windowed_rows

POOL_STRIDE = 2  # AvgPool1d(2, stride=2) after the layers
MODEL_TYPE = "qwen2_audio"  # config.json's model_type of a whole Qwen2-Audio model
# The prompt hf_forward_rows gives HF's forward: two text tokens, then one placeholder per row. Any ids do (the
# host's token embeddings are zeros); two leading tokens because HF's forward skips the audio merge for a
# one-token prompt (a decoding step).
TEXT_TOKEN_ID, AUDIO_TOKEN_ID = 0, 1
LEADING_TEXT_TOKENS = 2
# the special tokens Qwen2AudioProcessor reads off its tokenizer by name (Qwen2-Audio's own spellings)
QWEN2_AUDIO_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                      "audio_eos_token": "<|audio_eos|>"}  # fmt: skip


def qwen2_audio_window_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows of one Qwen2-Audio window holding ``M <= 3000`` real frames.

    conv2 (stride 2) leaves ``T = (M - 1) // 2 + 1`` valid rows, the stride-2 average pool
    ``(T - 2) // 2 + 1 = T // 2``: 750 for a full window, 0 for ``M <= 2``.

    >>> [qwen2_audio_window_rows(m) for m in (0, 1, 2, 3, 4, 5, 100, 2999, 3000)]
    [0, 0, 0, 1, 1, 1, 25, 750, 750]
    """
    return conv_out(mel_len, WINDOW_CONV_STRIDE) // POOL_STRIDE


ROWS_PER_WINDOW = qwen2_audio_window_rows(WINDOW_FRAMES)  # 750 pooled rows per 30 s window


def qwen2_audio_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Qwen2-Audio tower returns for ``M`` mel frames (after its average pool).

    ``qwen2_audio_window_rows(M)`` (750 for a full 30 s window) for a clip that fits one window;
    longer clips (``long_clip="windows"``) are consecutive windows:
    ``750 * (M // 3000) + qwen2_audio_window_rows(M % 3000)``.

    >>> [qwen2_audio_rows(m) for m in (2, 3, 3000, 3001, 3003, 6000)]
    [0, 1, 750, 750, 751, 1500]
    """
    return windowed_rows(mel_len, qwen2_audio_window_rows, WINDOW_FRAMES)


@dataclass(frozen=True)
class ValidRows:
    """The layer stack's input for a batch of windows: the valid conv rows of every window packed ``[N, d]``
    (positions added), each window's count ``[K]``, their attention layout and kernel."""

    hidden: torch.Tensor
    conv_rows: torch.Tensor
    layout: WindowLayout
    kernel: AttentionKernel


def embed_valid_rows(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, silence_per_window: bool = False
) -> ValidRows:
    """The first layer's input for the valid rows of each clip's silence-padded 30 s window(s).

    A valid row never reads a padded one except through the two convs, which read ``2 T + 1`` frames for ``T``
    valid conv rows. So the convs run on the batch's first ``min(3000, 2 T_max + 1)`` frames (the rest never
    reaches a valid row) and positions ``0..T-1`` are added. ``silence_per_window``: each window padded at its own
    silence level (see :func:`~contaudio.encoders.windows.split_into_windows`).
    """
    check_window(encoder)
    windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, silence_per_window)  # [K, 3000, n_mels], [K]
    conv_rows = conv_out(frames.cpu(), WINDOW_CONV_STRIDE)  # [K], each >= 1
    width = min(WINDOW_FRAMES, WINDOW_CONV_STRIDE * int(conv_rows.max()) + 1)  # frames the valid conv rows read
    features = windows[:, :width].transpose(1, 2).to(encoder.conv1.weight.dtype)  # [K, n_mels, width]
    embed = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features)))).transpose(1, 2)  # [K, R, d]
    embed = embed + encoder.embed_positions.weight[: embed.shape[1]].to(embed.dtype)
    layout = WindowLayout.from_window_rows(conv_rows, embed.device)  # built once per batch
    hidden = layout.to_rows(embed[:, : layout.window_len])  # [N, d]: the valid rows of every window
    return ValidRows(hidden, conv_rows, layout, attention_kernel(encoder.config, hidden.device, hidden.dtype))


def masked_window_forward(
    encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, silence_per_window: bool = False
) -> torch.Tensor:
    """The tower on each clip's silence-padded 30 s window(s), computing only the rows that hold the clip.

    HF masks the padded rows out of attention: the valid rows (:func:`embed_valid_rows`) run through the layers
    ONCE, packed (attention within each window's valid rows: exactly HF's mask), then the stride-2 average pool per
    window and the final layer norm. Equal to HF's masked forward over whole windows; a 5 s clip costs a sixth of
    its window. Returns ``[sum rows, d_model]``.
    """
    rows = embed_valid_rows(encoder, mel, lengths, silence_per_window)
    hidden = run_windowed_stack(encoder.layers, rows.hidden, rows.conv_rows, rows.kernel, rows.layout)
    starts = to_device(pool_group_starts(rows.conv_rows, POOL_STRIDE), hidden.device)
    return encoder.layer_norm((hidden[starts] + hidden[starts + 1]) / POOL_STRIDE)


def masked_hidden_states(
    encoder: PreTrainedModel,
    mel: torch.Tensor,
    lengths: torch.Tensor,
    layers: tuple[int, ...],
    silence_per_window: bool = False,
) -> torch.Tensor:
    """HF's ``output_hidden_states`` entries ``layers`` for the valid conv rows of each clip's window(s), the layers
    run (packed, masked as HF masks them) only up to the deepest one: ``[len(layers), sum conv rows, d_model]``."""
    rows = embed_valid_rows(encoder, mel, lengths, silence_per_window)
    return windowed_hidden_states(encoder.layers, rows.hidden, rows.conv_rows, rows.kernel, layers, rows.layout)


@register
class Qwen2Audio(WindowFamily):
    name = "qwen2_audio"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"qwen2_audio": ("audio_config",), "qwen2_audio_encoder": ()}
    weight_prefixes = ("audio_tower.", "model.audio_tower.", "")
    encoder_class = Qwen2AudioEncoder
    config_class = Qwen2AudioEncoderConfig
    default_features = LARGE_V3_FEATURES
    returns = "audio tower rows holding the clip (pooled to 25 Hz, d_model wide, before the projector)"
    oracle_path = (
        "WhisperFeatureExtractor (clip zero-padded to whole 30 s windows) -> the tower call of "
        "Qwen2AudioModel.forward (mask from _get_feat_extract_output_lengths), rows by that helper"
    )
    head_modules = ("avg_pooler", "layer_norm")  # after the stack: identities in returns="hidden_states"

    graph_stack = True  # the layers run through packed.run_windowed_stack
    rows = staticmethod(qwen2_audio_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return masked_window_forward(encoder, mel, lengths)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's ``Qwen2AudioModel.forward`` on the whole 30 s windows of the batch (:func:`hf_forward_rows`)."""
        return hf_forward_rows(encoder, *hf_windows(input_features, frames, WINDOW_FRAMES))

    # ------------------------------------------------------------------------------------------ hidden_states
    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Rows of each hidden state: the clip's conv rows of each window, ``whisper_rows`` (50 Hz, before the pool).

        >>> Qwen2Audio().hidden_rows(3001), Qwen2Audio().hidden_rows(2)
        (1501, 1)
        """
        return whisper_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        return masked_hidden_states(encoder, mel, lengths, layers)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """The tower's ``output_hidden_states`` in HF's ``Qwen2AudioModel.forward`` on the whole 30 s windows of the
        batch (:func:`hf_forward_hidden_states`)."""
        return hf_forward_hidden_states(encoder, *hf_windows(input_features, frames, WINDOW_FRAMES), layers)


# -------------------------------------------------------------------------------------------------- HF's forward
class Qwen2AudioHost(LanguageModelHost):
    """A :class:`~contaudio.encoders.oracle.LanguageModelHost` with HF's legacy merge, which ``Qwen2AudioModel.forward``
    calls on itself for a prompt without two adjacent placeholders (HF's method, unmodified)."""

    _merge_input_ids_with_audio_features = Qwen2AudioModel._merge_input_ids_with_audio_features


def hf_forward_rows(
    tower: PreTrainedModel,
    windows: torch.Tensor,
    window_frames: torch.Tensor,
    projector: nn.Module | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """``Qwen2AudioModel.forward`` (HF's, unmodified) on our tower: ``[K, n_mels, 3000]`` windows with ``[K]`` valid
    frames -> the rows it splices into the LM's input, in order, ``[rows, width]``.

    The forward runs on a :class:`Qwen2AudioHost` (zero token embeddings ``width`` wide, an LM that echoes its
    input) holding ``projector`` (the model's ``multi_modal_projector``, to the LM width ``width``; default an
    identity and the tower's ``d_model``), with the feature mask the processor gives those frames and a prompt
    holding one placeholder per row HF's ``_get_feat_extract_output_lengths`` counts: HF builds the tower's
    attention mask, runs the tower and the projector, keeps the rows its helper counts, checks they match the
    placeholders (it raises otherwise) and writes them at the placeholders, where they are read. A prompt with
    fewer than two placeholders (a clip of <= 1 row) takes HF's legacy merge, which writes them at the same
    positions.
    """
    if (projector is None) != (width is None):
        raise ValueError("hf_forward_rows: pass the projector together with its output width (the LM's), or neither")
    _, output_rows = tower._get_feat_extract_output_lengths(window_frames)
    device = tower.device
    prompt = [TEXT_TOKEN_ID] * LEADING_TEXT_TOKENS + [AUDIO_TOKEN_ID] * int(output_rows.sum())
    input_ids = torch.tensor([prompt], device=device)
    host = Qwen2AudioHost(tower, AUDIO_TOKEN_ID, width or tower.config.d_model, windows.dtype)
    if projector is not None:
        host.multi_modal_projector = projector
    out = Qwen2AudioModel.forward(
        host,
        input_ids=input_ids,
        input_features=windows,
        attention_mask=torch.ones_like(input_ids),
        feature_attention_mask=frame_mask(window_frames.to(device), windows.shape[2]),
    )
    return out.last_hidden_state[input_ids == AUDIO_TOKEN_ID]


def hf_forward_hidden_states(
    tower: PreTrainedModel, windows: torch.Tensor, window_frames: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """The tower's ``hidden_states`` in :func:`hf_forward_rows` (HF's ``Qwen2AudioModel.forward``: its mask, its tower
    call), entries ``layers``, each window's first ``(M - 1) // 2 + 1`` rows (HF's conv lengths, the first output
    of ``_get_feat_extract_output_lengths``): ``[len(layers), sum conv rows, d_model]``.

    The forward calls the tower without ``output_hidden_states``; the tower's config asks for them for this call
    (``capture_outputs`` reads ``config.output_hidden_states``) and a hook reads the tower's output. HF ties the
    last entry to ``last_hidden_state`` (after the average pool and ``layer_norm``): on the encoder this mode builds
    those are identities, so it is the last layer's output per conv row; on a whole tower it holds 750 pooled
    rows per window, which is refused (see the module docstring).
    """
    captured: list[tuple[torch.Tensor, ...]] = []
    hook = tower.register_forward_hook(lambda _module, _args, out: captured.append(out.hidden_states))
    before = tower.config.output_hidden_states
    tower.config.output_hidden_states = True
    try:
        hf_forward_rows(tower, windows, window_frames)
    finally:
        tower.config.output_hidden_states = before
        hook.remove()
    (hidden_states,) = captured
    states = pick_hidden_states(hidden_states, layers, len(tower.layers))  # [L, K, R, d]
    conv_rows, _ = tower._get_feat_extract_output_lengths(window_frames)
    if states.shape[2] != windows.shape[2] // WINDOW_CONV_STRIDE:
        raise ValueError(
            f"HF's hidden states {list(layers)} hold {states.shape[2]} rows per window, not one per conv row "
            f"({windows.shape[2] // WINDOW_CONV_STRIDE}): HF ties its last hidden state to last_hidden_state, after "
            "the average pool and layer_norm. Run this on the encoder returns='hidden_states' builds (those two are "
            "identities there), or ask for layers below the last"
        )
    return window_rows_of(states, conv_rows)


# ------------------------------------------------------------------------------------------------- returns="lm"
class Qwen2AudioAudioTower(Qwen2AudioPreTrainedModel):
    """The audio half of ``Qwen2AudioModel``: its ``audio_tower`` and ``multi_modal_projector``, under the
    checkpoint's own names, built from the whole ``Qwen2AudioConfig`` (the projector reads ``audio_config.d_model``
    and the LM width ``text_config.hidden_size``); the LM is never built."""

    config: Qwen2AudioConfig

    def __init__(self, config: Qwen2AudioConfig) -> None:
        super().__init__(config)
        self.audio_tower = Qwen2AudioEncoder(config.audio_config)
        self.multi_modal_projector = Qwen2AudioMultiModalProjector(config)
        self.post_init()


def qwen2_audio_processor(extractor: WhisperFeatureExtractor) -> Qwen2AudioProcessor:
    """HF's ``Qwen2AudioProcessor`` around ``extractor`` and a tiny tokenizer holding the special tokens it reads by
    name (:data:`QWEN2_AUDIO_TOKENS`)."""
    tokenizer = tiny_tokenizer(list(QWEN2_AUDIO_TOKENS.values()), named=QWEN2_AUDIO_TOKENS)
    return Qwen2AudioProcessor(extractor, tokenizer)


def processor_placeholders(processor: Qwen2AudioProcessor, wav: np.ndarray) -> int:
    """The audio tokens ``processor`` writes into a prompt holding the clip ``wav`` (mono, at the extractor's rate).

    A clip of <= 30 s (the extractor's ``n_samples``) is the prompt's one audio, as at inference. The processor
    truncates a longer one to 30 s; contaudio's ``long_clip="windows"`` encodes it as consecutive 30 s windows, so
    here it is one audio per 30 s piece of the waveform (one audio token each), in a single processor call.
    """
    extractor = processor.feature_extractor
    pieces = [wav[start : start + extractor.n_samples] for start in range(0, len(wav), extractor.n_samples)]
    audio = wav if len(pieces) <= 1 else pieces
    text = processor.audio_token * max(1, len(pieces))
    out = processor(text=text, audio=audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.audio_token)).sum())


class Qwen2AudioLM(Qwen2Audio):
    """Qwen2-Audio's ``returns="lm"``: the tower's pooled rows through the model's ``multi_modal_projector``, what
    ``Qwen2AudioModel.forward`` splices into the LM for the clip (see the module docstring)."""

    mode = "lm"
    encoder_class = Qwen2AudioAudioTower
    config_class = Qwen2AudioConfig
    weight_prefixes = PROJECTOR_LAYOUTS  # the hub's names, then transformers 5.x's
    returns = (
        "what Qwen2AudioModel.forward splices into the LM: the tower's pooled rows through multi_modal_projector "
        "(25 Hz, LM width); as many as Qwen2AudioProcessor's audio placeholders"
    )
    oracle_path = (
        "WhisperFeatureExtractor (clip zero-padded to whole 30 s windows) -> Qwen2AudioModel.forward on our tower "
        "and projector, rows read at the prompt's placeholders; placeholders: Qwen2AudioProcessor (tiny tokenizer)"
    )

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The whole ``Qwen2AudioConfig`` dict: the model's config with ``audio_config`` = ``encoder_config``."""
        return whole_model_config(self.name, MODEL_TYPE, encoder_config, model_config, "text_config.hidden_size")

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width, ``text_config.hidden_size`` read through ``Qwen2AudioConfig`` (the hub's config.json leaves it
        to Qwen2Config's default, 4096)."""
        return int(Qwen2AudioConfig.from_dict(encoder_config).text_config.hidden_size)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:func:`masked_window_forward` on the tower, then HF's projector: ``[sum rows, LM width]``."""
        return encoder.multi_modal_projector(masked_window_forward(encoder.audio_tower, mel, lengths))

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """The tower's (:func:`~contaudio.encoders.windows.whisper_style_flops`, whole windows) plus the projector on
        every pooled row of every window, as HF's forward runs it: ``2 * 750 d H`` per window (LM width ``H``)."""
        if isinstance(config, Mapping):
            config = Qwen2AudioConfig.from_dict(dict(config))
        windows = int(ceil_div(torch.as_tensor(lengths), WINDOW_FRAMES).sum())
        projector = ROWS_PER_WINDOW * config.audio_config.d_model * config.text_config.hidden_size
        return whisper_style_flops(config.audio_config, lengths) + FLOPS_PER_MAC * windows * projector

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's ``Qwen2AudioModel.forward`` on our tower and projector, on the whole 30 s windows of the batch."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        width = encoder.config.text_config.hidden_size
        return hf_forward_rows(encoder.audio_tower, windows, window_frames, encoder.multi_modal_projector, width)

    def hf_placeholders(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> int:
        """The audio tokens ``Qwen2AudioProcessor`` writes for the clip (:func:`processor_placeholders`)."""
        return processor_placeholders(qwen2_audio_processor(extractor), wav)


Qwen2Audio.lm_view = Qwen2AudioLM
