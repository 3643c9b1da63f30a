"""Audio Flamingo 3 audio tower (``model.audio_tower.*`` of nvidia/audio-flamingo-3-hf) and its projector.

A Whisper-large-v3 encoder with Qwen2-Audio's tail: one 30 s window (3000 frames, 128 mels) ->
conv1, conv2 (stride 2) -> 1500 rows, padded rows masked out of attention, a stride-2 average
pool and a layer norm -> 750 rows of ``d_model`` (1280). So a window holding ``M`` frames gives
``((M - 1) // 2 + 1) // 2`` rows (:func:`~contaudio.encoders.qwen2_audio.qwen2_audio_window_rows`).

Long audio: AudioFlamingo3Processor cuts the *waveform* into consecutive 30 s pieces, extracts each
one on its own (its own clamp, zero-padded to 30 s) and encodes them as windows, up to
``max_audio_len`` = 600 s (20 windows); it truncates the rest with a log line. contaudio cuts the
same way (the featurizer's ``waveform_window_s``, each window's padding at its own silence level),
encodes every window (``long_clip="windows"``; the default ``"raise"`` refuses clips > 30 s), and
refuses clips over 600 s instead of cutting them.

Rows: ``750 * (M // 3000) + ((M % 3000 - 1) // 2 + 1) // 2`` for ``M`` mel frames, window after window,
which is also the processor's own placeholder count (it counts on the summed frames; 3000-frame windows
make both agree). The projector maps each row to one LM row, so ``"lm"`` and ``"tower"`` count the same.

Modes (``returns=``):

- ``"lm"`` (the default, :class:`AudioFlamingo3LM`): ``AudioFlamingo3Model.get_audio_features(...).pooler_output``,
  the tower's rows through the model's ``multi_modal_projector`` (linear, GELU, linear) to the LM width
  (``text_config.hidden_size``, 3584): what the model writes at the prompt's ``<sound>`` placeholders.
- ``"tower"``: the tower's pooled rows (25 Hz, ``d_model`` wide, before the projector).
- ``"hidden_states"`` (:class:`AudioFlamingo3HiddenStates`): HF's ``output_hidden_states`` of the tower. In
  transformers 5.x (5.14 to 5.25, ``capture_outputs``) entry 0 is the first layer's input (GELU convs + learned
  positions), entry ``i`` layer ``i``'s raw output (50 Hz, before the pool: ``whisper_rows``), and the last entry
  is tied to ``last_hidden_state``: the tower's output, average-pooled and normed (25 Hz, the tower's rows). The
  rows differ, so the last layer is asked for alone (it is then ``"tower"``'s rows) or not at all; below it the
  pool and norm are never built.

Oracle: ``AudioFlamingo3Processor`` itself (the card's extractor, a tiny tokenizer) on a prompt with the clip:
its windows and ``input_features_mask`` go through ``AudioFlamingo3Model.get_audio_features`` on our modules
(``"tower"``: projector set aside, ``last_hidden_state``, rows by the tower's own ``_get_feat_extract_output_lengths``;
``"lm"``: our tower and projector, ``pooler_output``, with the processor's placeholder count;
``"hidden_states"``: ``output_hidden_states=True``, rows by the same helper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.audioflamingo3.configuration_audioflamingo3 import (
    AudioFlamingo3Config,
    AudioFlamingo3EncoderConfig,
)
from transformers.models.audioflamingo3.modeling_audioflamingo3 import (
    AudioFlamingo3Encoder,
    AudioFlamingo3Model,
    AudioFlamingo3MultiModalProjector,
    AudioFlamingo3PreTrainedModel,
)
from transformers.models.audioflamingo3.processing_audioflamingo3 import AudioFlamingo3Processor

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import ProjectorFreeHost, pick_hidden_states, select_rows
from contaudio.encoders.qwen2_audio import masked_hidden_states, masked_window_forward, qwen2_audio_rows
from contaudio.encoders.registry import PROJECTOR_LAYOUTS, EncoderFamily, HiddenStatesView, IntOrTensor, register
from contaudio.encoders.whisper import window_rows_of
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_FRAMES,
    ProcessorWindowFamily,
    whisper_rows,
    whisper_style_flops,
    whole_model_config,
)
from contaudio.lengths import ceil_div

MAX_AUDIO_S = 600  # AudioFlamingo3Processor(max_audio_len=600): 20 windows of 30 s
MODEL_TYPE = "audioflamingo3"  # config.json's model_type of a whole Audio Flamingo 3 model
PROJECTOR_MATMULS = 2  # linear_1 (audio width -> LM width), linear_2 (LM width -> LM width)


class AudioFlamingo3AudioTower(AudioFlamingo3PreTrainedModel):
    """The audio half of ``AudioFlamingo3Model``: its ``audio_tower`` and ``multi_modal_projector``, under the
    checkpoint's own names, built from the whole ``AudioFlamingo3Config`` (the projector reads
    ``audio_config.hidden_size``, ``projector_hidden_act``, ``projector_bias`` and the LM width
    ``text_config.hidden_size``); the language model is never built."""

    config: AudioFlamingo3Config

    def __init__(self, config: AudioFlamingo3Config) -> None:
        super().__init__(config)
        self.audio_tower = AudioFlamingo3Encoder(config.audio_config)
        self.multi_modal_projector = AudioFlamingo3MultiModalProjector(config)
        self.post_init()


@register
class AudioFlamingo3(ProcessorWindowFamily):
    name = "audioflamingo3"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "audioflamingo3": ("audio_config",),
        "audioflamingo3_encoder": (),
    }
    weight_prefixes = ("model.audio_tower.", "audio_tower.", "")
    encoder_class = AudioFlamingo3Encoder
    config_class = AudioFlamingo3EncoderConfig
    processor_class = AudioFlamingo3Processor
    default_features = LARGE_V3_FEATURES
    cuts_waveform = True
    max_frames = MAX_AUDIO_S * WINDOW_FRAMES // 30
    num_layers_key = "num_hidden_layers"  # AudioFlamingo3EncoderConfig's names (encoder_layers / d_model: aliases)
    hidden_dim_key = "hidden_size"
    head_modules = ("avg_pooler", "layer_norm")  # after the stack; HF's last hidden state includes both
    returns = "audio tower rows holding the clip (pooled to 25 Hz, d_model wide, before the projector), per 30 s window"
    oracle_path = (
        "AudioFlamingo3Processor (card's extractor, tiny tokenizer): its 30 s windows and input_features_mask -> "
        "AudioFlamingo3Model.get_audio_features(...).last_hidden_state, rows by _get_feat_extract_output_lengths"
    )

    graph_stack = True  # the layers run through packed.run_windowed_stack
    rows = staticmethod(qwen2_audio_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Qwen2-Audio's packed masked-window forward, each 30 s window padded at its own silence level."""
        return masked_window_forward(encoder, mel, lengths, silence_per_window=self.cuts_waveform)

    def hf_encode_windows(self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = AudioFlamingo3Model.get_audio_features(ProjectorFreeHost(encoder), windows, mask).last_hidden_state
        return select_rows(hidden, encoder._get_feat_extract_output_lengths(mask.sum(-1))[1])

    # ------------------------------------------------------------------------------------------ hidden_states
    def view(
        self, returns: str | None, layers: Sequence[int] | None = None, encoder_config: dict[str, Any] | None = None
    ) -> EncoderFamily:
        view = super().view(returns, layers, encoder_config)
        if isinstance(view, HiddenStatesView):
            return AudioFlamingo3HiddenStates(self, view.layers, self.num_layers(encoder_config or {}))
        return view

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Rows of the hidden states below the last: the layers' 50 Hz rows holding the clip, ``whisper_rows``."""
        return whisper_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """HF's hidden states ``layers`` of each clip's valid rows (Qwen2-Audio's
        :func:`~contaudio.encoders.qwen2_audio.masked_hidden_states` on windows cut as the processor cuts them, the
        layers up to the deepest asked for): ``[len(layers), sum rows, d_model]``. The last entry (asked alone) is the
        tower's output."""
        if int(getattr(encoder.config, self.num_layers_key)) in layers:
            return self.forward(encoder, mel, lengths)[None]
        return masked_hidden_states(encoder, mel, lengths, layers, silence_per_window=self.cuts_waveform)

    def hf_hidden_windows(
        self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """``AudioFlamingo3Model.get_audio_features(..., output_hidden_states=True)`` on the processor's windows and
        masks, each window's rows by the tower's own ``_get_feat_extract_output_lengths``: the pooled count for
        HF's last entry (``last_hidden_state``, when the pool is there), the conv count for the others."""
        host = ProjectorFreeHost(encoder)
        out = AudioFlamingo3Model.get_audio_features(host, windows, mask, output_hidden_states=True)
        states = pick_hidden_states(out.hidden_states, layers, len(encoder.layers))
        conv_rows, pooled_rows = encoder._get_feat_extract_output_lengths(mask.sum(-1))
        pooled = len(encoder.layers) in layers and isinstance(encoder.avg_pooler, nn.AvgPool1d)
        return window_rows_of(states, pooled_rows if pooled else conv_rows)


class AudioFlamingo3HiddenStates(HiddenStatesView):
    """Audio Flamingo 3's ``returns="hidden_states"``: HF's last entry is the tower's pooled, normed output (25 Hz),
    the others the layers' raw 50 Hz outputs (see the module docstring), so the last layer is asked for alone
    (rows: the tower's) or not at all (rows: ``whisper_rows``; the pool and the norm become identities)."""

    def __init__(self, tower: EncoderFamily, layers: tuple[int, ...], depth: int) -> None:
        if depth in layers and len(layers) > 1:
            raise ValueError(
                f"{tower.name}: layers={list(layers)} mixes HF's last hidden state ({depth}: the tower's output, "
                f"average-pooled to 25 Hz and normed, as HF ties it to last_hidden_state) with the layers' 50 Hz "
                f"outputs before the pool: their rows differ, so one [layers, T, D] tensor cannot hold them. Ask for "
                f"layer {depth} alone (the rows of returns='tower') or only for layers below {depth}"
            )
        super().__init__(tower, layers)
        self.pooled = depth in layers

    def rows(self, mel_len: IntOrTensor) -> IntOrTensor:  # type: ignore[override]
        return qwen2_audio_rows(mel_len) if self.pooled else whisper_rows(mel_len)

    def trim(self, encoder: PreTrainedModel) -> None:
        """The last layer asked for: the whole tower, pool and norm included; otherwise the base trim."""
        if not self.pooled:
            super().trim(encoder)


# ------------------------------------------------------------------------------------------------- returns="lm"
class AudioFlamingo3LM(AudioFlamingo3):
    """Audio Flamingo 3's ``returns="lm"``: ``get_audio_features(...).pooler_output``, the tower's rows of every
    window through the model's ``multi_modal_projector`` (see the module docstring); one LM row per tower row."""

    mode = "lm"
    encoder_class = AudioFlamingo3AudioTower
    config_class = AudioFlamingo3Config
    weight_prefixes = PROJECTOR_LAYOUTS  # the hub's names, then transformers 5.x's
    returns = (
        "AudioFlamingo3Model.get_audio_features(...).pooler_output: the tower's pooled rows (25 Hz) of every 30 s "
        "window through multi_modal_projector, LM width; as many as the processor's <sound> placeholders"
    )
    oracle_path = (
        "AudioFlamingo3Processor (card's extractor, tiny tokenizer): its 30 s windows and input_features_mask -> "
        "AudioFlamingo3Model.get_audio_features(...).pooler_output on our tower and projector; placeholders: the "
        "processor's <sound> tokens in the prompt"
    )

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The whole ``AudioFlamingo3Config`` dict: the model's config with ``audio_config`` = ``encoder_config``."""
        return whole_model_config(
            self.name, MODEL_TYPE, encoder_config, model_config,
            "projector_hidden_act, projector_bias and text_config.hidden_size",
        )  # fmt: skip

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width, ``text_config.hidden_size`` of the module config."""
        return int(encoder_config["text_config"]["hidden_size"])

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The tower's rows (:meth:`AudioFlamingo3.forward`) through HF's projector: ``[sum rows, LM width]``."""
        rows = masked_window_forward(encoder.audio_tower, mel, lengths, silence_per_window=self.cuts_waveform)
        return encoder.multi_modal_projector(rows)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """The tower's (:func:`whisper_style_flops`: whole 30 s windows, as HF computes them) plus the projector's
        two matmuls on every row HF projects, all 750 of each window: ``2 * 750 (d_model H + H^2)`` per window for
        the LM width ``H`` (contaudio's forward projects only the clip's rows)."""
        if isinstance(config, Mapping):
            config = AudioFlamingo3Config.from_dict(dict(config))
        width, audio = config.text_config.hidden_size, config.audio_config.hidden_size
        rows = int(qwen2_audio_rows(WINDOW_FRAMES)) * int(ceil_div(torch.as_tensor(lengths), WINDOW_FRAMES).sum())
        return whisper_style_flops(config.audio_config, lengths) + FLOPS_PER_MAC * rows * (audio + width) * width

    def hf_encode_windows(self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """HF's ``AudioFlamingo3Model.get_audio_features(...).pooler_output`` on our tower and projector."""
        return AudioFlamingo3Model.get_audio_features(encoder, windows, mask).pooler_output


AudioFlamingo3.lm_view = AudioFlamingo3LM
