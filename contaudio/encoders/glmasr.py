"""GLM-ASR audio tower (``model.audio_tower.*`` of zai-org/GLM-ASR-Nano-2512) and its merge + projector.

A Whisper-large-v3-shaped encoder with rotary positions (half the head dims) instead of learned
ones and no padding mask: one 30 s window (3000 frames, 128 mels) -> conv1, conv2 (stride 2) ->
1500 rows of ``hidden_size`` (1280), full attention over the window, padding included. So every
clip is padded with the log-mel of silence, as the extractor pads it, and its
``(M - 1) // 2 + 1`` rows are kept (:func:`~contaudio.encoders.windows.whisper_rows`), as for
Whisper.

Long audio: GlmAsrProcessor cuts the *waveform* into consecutive 30 s pieces, extracts each one
on its own and encodes them as windows, up to ``max_audio_len`` = 655 s, i.e. 21 whole windows
(630 s); it truncates the rest with a log line. contaudio cuts the same way (the featurizer's
``waveform_window_s``, each window padded at its own silence level), encodes every window
(``long_clip="windows"``) and refuses clips over 630 s instead of cutting them.

Modes (``returns=``):

- ``"lm"`` (the default, :class:`GlmAsrLM`): ``GlmAsrModel.get_audio_features(...).pooler_output``. Per window, the
  model reshapes the tower's 1500 rows 4 at a time into ``intermediate_size`` (4 x 1280) columns, runs
  ``multi_modal_projector`` (linear, GELU, linear) to the LM width (2048) and keeps ``(T - 4) // 4 + 1`` of the 375
  rows for a window holding ``T`` tower rows (a last group of < 4 rows is dropped): 12.5 Hz. The processor writes
  ``(T - 4) // 4 + 1`` placeholders for the ``T`` tower rows of the whole clip; 1500 rows per window is a multiple
  of 4, so the count per window (the model) and over the clip (the processor) agree: :func:`glm_asr_lm_rows`.
- ``"tower"``: the tower's rows that hold the clip (50 Hz, ``hidden_size`` wide, before the merge and projector):
  ``1500 * (M // 3000) + (M % 3000 - 1) // 2 + 1``.
- ``"hidden_states"``: those rows of HF's ``output_hidden_states`` entries. In transformers 5.x (5.14 to 5.25,
  ``capture_outputs``) entry 0 is the first layer's input (the GELU convs; the rotary positions act inside
  attention), entry ``i`` layer ``i``'s output, and the last entry is tied to ``last_hidden_state``: the last
  layer's output after the final ``norm``. So ``norm`` stays when the last layer is asked for and becomes an
  identity otherwise (``final_norm``, :class:`~contaudio.encoders.registry.HiddenStatesView`).

Oracle: ``GlmAsrProcessor`` itself (the card's extractor, a tiny tokenizer) on a prompt with the clip: its
windows and ``input_features_mask`` go through ``GlmAsrModel.get_audio_features`` on our modules (``"tower"``
and ``"hidden_states"``: projector set aside, ``last_hidden_state`` / ``hidden_states``, rows by the conv lengths
HF computes there, ``_get_feat_extract_output_lengths`` of Whisper's encoder, which GLM-ASR inlines; ``"lm"``:
our tower and projector, ``pooler_output``, with the processor's placeholder count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.glmasr.configuration_glmasr import GlmAsrConfig, GlmAsrEncoderConfig
from transformers.models.glmasr.modeling_glmasr import (
    GlmAsrEncoder,
    GlmAsrModel,
    GlmAsrMultiModalProjector,
    GlmAsrPreTrainedModel,
)
from transformers.models.glmasr.processing_glmasr import GlmAsrProcessor
from transformers.models.whisper.modeling_whisper import WhisperPreTrainedModel

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, config_value
from contaudio.encoders.oracle import ProjectorFreeHost, pick_hidden_states, select_rows
from contaudio.encoders.registry import PROJECTOR_LAYOUTS, IntOrTensor, register
from contaudio.encoders.whisper import window_rows_of
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_CONV_KERNEL,
    WINDOW_CONV_STRIDE,
    WINDOW_FRAMES,
    ProcessorWindowFamily,
    check_window,
    split_into_windows,
    whisper_rows,
    whole_model_config,
    window_conv_rows,
)
from contaudio.lengths import ceil_div, conv_out, windowed_rows

MAX_WINDOWS = 655 // 30  # GlmAsrProcessor(max_audio_len=655) keeps int(655 // 30) = 21 whole 30 s windows
MERGE_FACTOR = 4  # get_audio_features: 4 tower rows -> one LM row (intermediate_size = 4 * hidden_size)
MLP_MATMULS = 2  # fc1, fc2
PROJECTOR_WIDTH = 2  # GlmAsrMultiModalProjector: linear_1 to 2 x the LM width, linear_2 back to the LM width
MODEL_TYPE = "glmasr"  # config.json's model_type of a whole GLM-ASR model


def glm_asr_window_lm_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """LM rows of one window holding ``M <= 3000`` frames: its ``T = (M - 1) // 2 + 1`` tower rows merged 4 at a
    time, a last group of < 4 dropped: ``(T - 4) // 4 + 1`` (0 for ``M <= 6``, 375 for a full window).

    >>> [glm_asr_window_lm_rows(m) for m in (0, 1, 6, 7, 14, 15, 3000)]
    [0, 0, 0, 1, 1, 2, 375]
    """
    return (window_conv_rows(mel_len) - MERGE_FACTOR) // MERGE_FACTOR + 1


def glm_asr_lm_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows GLM-ASR feeds its LM for ``M`` mel frames: ``375 * (M // 3000) + glm_asr_window_lm_rows(M % 3000)``,
    which is also ``(T - 4) // 4 + 1`` for the clip's ``T = whisper_rows(M)`` tower rows (GlmAsrProcessor's count:
    1500 rows per window is a multiple of 4).

    >>> [glm_asr_lm_rows(m) for m in (0, 7, 3000, 3001, 3007, 6000, 63000)]
    [0, 1, 375, 375, 376, 750, 7875]
    """
    return windowed_rows(mel_len, glm_asr_window_lm_rows, WINDOW_FRAMES)


def glm_asr_flops(config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
    """Matmul FLOPs of the GLM-ASR tower over clips of ``lengths`` mel frames: whole 30 s windows.

    Per window of ``W`` frames, ``R = W // 2`` rows, ``d`` wide, ``h`` heads of which ``g`` key/value
    heads: conv1 ``2 W n_mels 3 d``, conv2 ``2 R d 3 d``, per layer q/o ``2 * 2 R d^2``, k/v
    ``2 * 2 R d (d g / h)``, MLP ``2 * 2 R d ffn``, attention ``2 * 2 R^2 d``.
    """
    d, ffn = config_value(config, "hidden_size"), config_value(config, "intermediate_size")
    layers, n_mels = config_value(config, "num_hidden_layers"), config_value(config, "num_mel_bins")
    heads = config_value(config, "num_attention_heads")
    kv_heads = config_value(config, "num_key_value_heads") if _has(config, "num_key_value_heads") else heads
    rows = conv_out(WINDOW_FRAMES, WINDOW_CONV_STRIDE)
    projections = 2 * d * d + 2 * d * (d * kv_heads // heads)
    window = WINDOW_FRAMES * n_mels * WINDOW_CONV_KERNEL * d + rows * d * WINDOW_CONV_KERNEL * d
    window += layers * (rows * (projections + MLP_MATMULS * d * ffn) + attention_macs(rows, d))
    windows = int(ceil_div(torch.as_tensor(lengths), WINDOW_FRAMES).sum())
    return float(FLOPS_PER_MAC * window * windows)


def _has(config: Mapping[str, Any] | Any, key: str) -> bool:
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return value is not None


def window_hidden_states(
    encoder: nn.Module, windows: torch.Tensor, layers: tuple[int, ...], depth: int
) -> torch.Tensor:
    """HF's ``output_hidden_states`` entries ``layers`` of a GLM-ASR tower of ``depth`` layers on 30 s windows, running
    HF's layers only up to the deepest one asked for: ``[K, n_mels, W]`` -> ``[len(layers), K, W // 2, d]``.

    Entry 0 is the GELU convs' output, entry ``i`` layer ``i``'s (with the tower's rotary positions, full attention
    over the window as HF's forward runs it); entry ``depth`` goes through ``encoder.norm``, as HF ties its last
    hidden state to ``last_hidden_state``.
    """
    wanted = set(layers)
    hidden = F.gelu(encoder.conv2(F.gelu(encoder.conv1(windows)))).transpose(1, 2)  # [K, R, d]
    positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
    rotary = encoder.rotary_emb(hidden, position_ids=positions)
    states = {0: hidden} if 0 in wanted else {}
    for index, layer in enumerate(encoder.layers[: max(layers)], start=1):
        hidden = layer(hidden, position_embeddings=rotary)
        if index in wanted:
            states[index] = hidden
    if depth in states:
        states[depth] = encoder.norm(states[depth])
    return torch.stack([states[index] for index in layers])


@register
class GlmAsr(ProcessorWindowFamily):
    name = "glmasr"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"glmasr": ("audio_config",), "glmasr_encoder": ()}
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = GlmAsrEncoder
    config_class = GlmAsrEncoderConfig
    processor_class = GlmAsrProcessor
    output_dim_key = "hidden_size"
    default_features = LARGE_V3_FEATURES
    cuts_waveform = True
    positions_key = "max_position_embeddings"  # rotary positions
    max_frames = MAX_WINDOWS * WINDOW_FRAMES
    num_layers_key = "num_hidden_layers"
    hidden_dim_key = "hidden_size"
    final_norm = "norm"  # after the stack; HF's last hidden state includes it
    returns = "audio tower rows holding the clip (50 Hz, hidden_size wide, before the 4-row merge and projector)"
    oracle_path = (
        "GlmAsrProcessor (card's extractor, tiny tokenizer): its 30 s windows and input_features_mask -> "
        "GlmAsrModel.get_audio_features(...).last_hidden_state per window, rows by the conv output lengths"
    )

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return glm_asr_flops(config, lengths)

    def hf_encode_windows(self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = GlmAsrModel.get_audio_features(self.projector_free(encoder), windows, mask).last_hidden_state
        return select_rows(hidden, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, mask.sum(-1)))

    @staticmethod
    def projector_free(encoder: PreTrainedModel) -> ProjectorFreeHost:
        """A host for ``get_audio_features`` with an identity projector (it regroups 4 rows into
        ``intermediate_size`` columns for it): its ``last_hidden_state`` / ``hidden_states`` are the tower's."""
        width = SimpleNamespace(intermediate_size=MERGE_FACTOR * encoder.config.hidden_size)
        return ProjectorFreeHost(encoder, SimpleNamespace(return_dict=True, audio_config=width))

    # ------------------------------------------------------------------------------------------ hidden_states
    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Rows of each hidden state: the tower's, ``whisper_rows`` (50 Hz, the clip's own frames per window)."""
        return whisper_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """Each clip's windows as ``"tower"`` pads them (silence, each window at its own level), the layers run up
        to the deepest asked for (:func:`window_hidden_states`), the clip's rows kept: ``[len(layers), rows, d]``."""
        check_window(encoder, self.positions_key)
        windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, self.cuts_waveform)  # [K, 3000, n_mels]
        depth = int(getattr(encoder.config, self.num_layers_key))
        states = window_hidden_states(encoder, windows.transpose(1, 2), layers, depth)
        return window_rows_of(states, window_conv_rows(frames))

    def hf_hidden_windows(
        self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """``GlmAsrModel.get_audio_features(..., output_hidden_states=True)`` on the processor's windows and masks,
        each window's rows by the conv lengths HF computes (Whisper's helper)."""
        host = self.projector_free(encoder)
        out = GlmAsrModel.get_audio_features(host, windows, mask, output_hidden_states=True)
        states = pick_hidden_states(out.hidden_states, layers, len(encoder.layers))
        return window_rows_of(states, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, mask.sum(-1)))


# ------------------------------------------------------------------------------------------------- returns="lm"
class GlmAsrAudioTower(GlmAsrPreTrainedModel):
    """The audio half of ``GlmAsrModel``: its ``audio_tower`` and ``multi_modal_projector``, under the checkpoint's
    own names, built from the whole ``GlmAsrConfig`` (the merge reads ``audio_config.intermediate_size``, the
    projector ``projector_hidden_act`` and the LM width ``text_config.hidden_size``); the LM is never built."""

    config: GlmAsrConfig

    def __init__(self, config: GlmAsrConfig) -> None:
        super().__init__(config)
        self.audio_tower = GlmAsrEncoder(config.audio_config)
        self.multi_modal_projector = GlmAsrMultiModalProjector(config)
        self.post_init()


def check_merge(config: GlmAsrConfig) -> None:
    """The length rule (HF's count too) assumes ``get_audio_features`` groups 4 tower rows per LM row."""
    audio = config.audio_config
    if audio.intermediate_size != MERGE_FACTOR * audio.hidden_size:
        raise ValueError(
            f"GLM-ASR audio_config with intermediate_size={audio.intermediate_size}, hidden_size={audio.hidden_size}: "
            f"get_audio_features then groups {audio.intermediate_size / audio.hidden_size:g} tower rows per LM row, "
            f"while HF's own count (and contaudio's rule) merges {MERGE_FACTOR}; intermediate_size must be "
            f"{MERGE_FACTOR} * hidden_size, as in GLM-ASR-Nano"
        )


class GlmAsrLM(GlmAsr):
    """GLM-ASR's ``returns="lm"``: ``get_audio_features(...).pooler_output``, the tower's rows of every window merged
    4 at a time and projected to the LM width (see the module docstring)."""

    mode = "lm"
    encoder_class = GlmAsrAudioTower
    config_class = GlmAsrConfig
    weight_prefixes = PROJECTOR_LAYOUTS  # the hub's names, then transformers 5.x's
    returns = (
        "GlmAsrModel.get_audio_features(...).pooler_output: the tower's rows of every 30 s window merged 4 into one "
        "and projected to the LM width (12.5 Hz); as many as the processor's audio placeholders"
    )
    oracle_path = (
        "GlmAsrProcessor (card's extractor, tiny tokenizer): its 30 s windows and input_features_mask -> "
        "GlmAsrModel.get_audio_features(...).pooler_output on our tower and projector; placeholders: the "
        "processor's audio tokens in the prompt"
    )

    rows = staticmethod(glm_asr_lm_rows)

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The whole ``GlmAsrConfig`` dict: the model's config with ``audio_config`` = ``encoder_config``."""
        return whole_model_config(
            self.name, MODEL_TYPE, encoder_config, model_config, "projector_hidden_act and text_config.hidden_size"
        )

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width, ``text_config.hidden_size`` of the module config."""
        return int(encoder_config["text_config"]["hidden_size"])

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The tower on every silence-padded window (:meth:`window_forward`), its 1500 rows regrouped 4 at a time
        into ``intermediate_size`` columns as ``get_audio_features`` does, the groups HF keeps
        (:func:`glm_asr_window_lm_rows`) through HF's projector: ``[sum rows, LM width]``."""
        check_merge(encoder.config)
        hidden, frames = self.window_forward(encoder.audio_tower, mel, lengths)  # [K, 1500, d]
        merged = hidden.reshape(hidden.shape[0], -1, encoder.config.audio_config.intermediate_size)  # [K, 375, 4 d]
        return encoder.multi_modal_projector(select_rows(merged, glm_asr_window_lm_rows(frames)))

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """The tower's (:func:`glm_asr_flops`: whole 30 s windows, as HF computes them) plus the projector's two
        matmuls on every row HF projects, all 375 of each window: ``2 * 375 (4 d * 2 H + 2 H * H)`` per window for
        the tower width ``d`` and the LM width ``H`` (contaudio's forward projects only the clip's rows)."""
        if isinstance(config, Mapping):
            config = GlmAsrConfig.from_dict(dict(config))
        width, merged = config.text_config.hidden_size, config.audio_config.intermediate_size
        rows = int(glm_asr_lm_rows(WINDOW_FRAMES)) * int(ceil_div(torch.as_tensor(lengths), WINDOW_FRAMES).sum())
        projector = (merged + width) * PROJECTOR_WIDTH * width
        return glm_asr_flops(config.audio_config, lengths) + FLOPS_PER_MAC * rows * projector

    def hf_encode_windows(self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """HF's ``GlmAsrModel.get_audio_features(...).pooler_output`` on our tower and projector."""
        return GlmAsrModel.get_audio_features(encoder, windows, mask).pooler_output


GlmAsr.lm_view = GlmAsrLM
