"""Voxtral audio encoder (``audio_tower.*`` of mistralai/Voxtral-Mini-3B-2507 and -Small-24B-2507).

A Whisper-large-v3 encoder under another name: one 30 s window (3000 frames, 128 mels) -> 1500
rows of ``d_model`` (1280), full attention over the window and no padding mask. Voxtral's
processor pads the waveform to the next multiple of 30 s and encodes each window on its own,
which is exactly our ``long_clip="windows"`` policy. So the family reuses the Whisper-style forward
and length rule unchanged (:class:`~contaudio.encoders.windows.WindowFamily`): only the HF classes,
the config path, the weight prefix and the oracle's HF method differ.

Modes (``returns=``):

- ``"lm"`` (the default, :class:`VoxtralLM`): what ``VoxtralModel.get_audio_features(...).pooler_output``
  feeds the LM. Voxtral's processor hands the tower every 30 s window of the zero-padded waveform, and the
  model keeps all 1500 rows of each, the padding's included; it reshapes them 4 rows at a time into
  ``intermediate_size`` (5120) columns and runs ``multi_modal_projector`` to the LM width: 375 rows per
  window (12.5 Hz), ``375 * ceil(M / 3000)`` for ``M`` mel frames, as many as the audio placeholder tokens
  the processor writes.
- ``"tower"``: the tower's rows for the clip's own frames (``last_hidden_state``: 50 Hz, before the
  reshape and projector).
- ``"hidden_states"``: those rows of HF's ``output_hidden_states`` entries (see
  :class:`~contaudio.encoders.whisper.WhisperHiddenStates`).

Oracle: HF's extractor with Voxtral's processor padding (whole 30 s windows), the windows cut as its
processor cuts them, then ``VoxtralModel.get_audio_features`` on our modules: for ``"tower"`` with the
projector and reshape set aside and rows selected by Whisper's ``_get_feat_extract_output_lengths``
(Voxtral has none); for ``"lm"`` on the windows of ``VoxtralProcessor``'s own audio path, whole.

The placeholder count for ``"lm"``: ``VoxtralProcessor`` writes no audio tokens itself; its tokenizer
(``MistralCommonBackend``, i.e. mistral-common's Tekken tokenizer, whose files only the hub has) does, from
the tekken file's audio settings (16 kHz, ``frame_rate`` 12.5 Hz, ``chunk_length_s`` 30): it pads the clip to
whole 30 s chunks and writes ``ceil((samples / hop) / (sampling_rate // frame_rate // hop))`` = 375 tokens
per chunk. contaudio cannot build that tokenizer offline, so :meth:`VoxtralLM.hf_placeholders` takes the
windows from HF's own processor code (``VoxtralProcessor._retrieve_input_features``, its audio settings) and
counts :data:`TOKENS_PER_WINDOW` for each; the test checks that count against mistral-common's where it is
installed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import PreTrainedModel, VoxtralProcessor, WhisperFeatureExtractor
from transformers.models.voxtral.configuration_voxtral import VoxtralConfig, VoxtralEncoderConfig
from transformers.models.voxtral.modeling_voxtral import (
    VoxtralEncoder,
    VoxtralModel,
    VoxtralMultiModalProjector,
    VoxtralPreTrainedModel,
)
from transformers.models.voxtral.processing_voxtral import VoxtralProcessorKwargs
from transformers.models.whisper.modeling_whisper import WhisperPreTrainedModel

from contaudio.benchmark import FLOPS_PER_MAC
from contaudio.encoders.oracle import ProjectorFreeHost, pick_hidden_states, select_rows
from contaudio.encoders.registry import PROJECTOR_LAYOUTS, IntOrTensor, register
from contaudio.encoders.tokenizers import PAD_TOKEN, UNK_TOKEN, tiny_tokenizer
from contaudio.encoders.whisper import WhisperHiddenStates, window_rows_of
from contaudio.encoders.windows import (
    LARGE_V3_FEATURES,
    WINDOW_FRAMES,
    hf_windows,
    whisper_style_flops,
    whole_model_config,
)
from contaudio.lengths import ceil_div

ROWS_PER_WINDOW = WINDOW_FRAMES // 2  # 1500 tower rows per 30 s window (conv2 stride 2)
ROWS_PER_TOKEN = 4  # get_audio_features reshapes rows into intermediate_size = 4 * d_model columns
TOKENS_PER_WINDOW = ROWS_PER_WINDOW // ROWS_PER_TOKEN  # 375 = 30 s * 12.5 Hz, the tokenizer's frame_rate
AUDIO_TOKEN_ID = 24  # VoxtralProcessor's audio_token_id (fixed in its __init__; Tekken's "[AUDIO]")
AUDIO_TOKEN = "[AUDIO]"
MODEL_TYPE = "voxtral"  # config.json's model_type of a whole Voxtral model


def voxtral_lm_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows Voxtral feeds its LM for ``M`` mel frames: ``375 * ceil(M / 3000)``, every 30 s window whole.

    The processor pads the waveform to whole 30 s windows; each window gives 1500 tower rows, reshaped
    4 at a time before the projector. ``M`` = 0 gives 0.

    >>> [voxtral_lm_rows(m) for m in (0, 1, 2999, 3000, 3001, 6000, 9001)]
    [0, 375, 375, 375, 750, 750, 1500]
    """
    return TOKENS_PER_WINDOW * ceil_div(mel_len, WINDOW_FRAMES)


class VoxtralAudioTower(VoxtralPreTrainedModel):
    """The audio half of ``VoxtralModel``: its ``audio_tower`` and ``multi_modal_projector``, under the
    checkpoint's own names, built from the whole ``VoxtralConfig`` (the projector reads
    ``audio_config.intermediate_size``, ``projector_hidden_act`` and the LM width ``text_config.hidden_size``);
    the language model is never built."""

    config: VoxtralConfig

    def __init__(self, config: VoxtralConfig) -> None:
        super().__init__(config)
        self.audio_tower = VoxtralEncoder(config.audio_config)
        self.multi_modal_projector = VoxtralMultiModalProjector(config)
        self.post_init()


def check_reshape(config: VoxtralConfig) -> None:
    """The length rule assumes ``get_audio_features`` groups 4 tower rows per LM row (every official checkpoint)."""
    audio = config.audio_config
    if audio.intermediate_size != ROWS_PER_TOKEN * audio.hidden_size:
        raise ValueError(
            f"Voxtral audio_config with intermediate_size={audio.intermediate_size}, hidden_size="
            f"{audio.hidden_size}: get_audio_features then groups {audio.intermediate_size / audio.hidden_size:g} "
            f"tower rows per LM row; contaudio's length rule needs {ROWS_PER_TOKEN} (intermediate_size = "
            f"{ROWS_PER_TOKEN} * hidden_size), as the tokenizer writes {TOKENS_PER_WINDOW} audio tokens per 30 s"
        )


def voxtral_processor(extractor: WhisperFeatureExtractor) -> VoxtralProcessor:
    """HF's ``VoxtralProcessor`` around ``extractor`` and a tiny tokenizer whose id 24 is ``[AUDIO]``: enough for
    its audio path (``_retrieve_input_features``), not for its prompts (those need mistral-common's tokenizer)."""
    fillers = [f"[SPECIAL_{i}]" for i in range(len((UNK_TOKEN, PAD_TOKEN)), AUDIO_TOKEN_ID)]
    processor = VoxtralProcessor(extractor, tiny_tokenizer([*fillers, AUDIO_TOKEN]))
    if processor.audio_token != AUDIO_TOKEN:  # the processor reads its audio token from id 24
        raise RuntimeError(f"VoxtralProcessor's audio token is {processor.audio_token!r}, expected {AUDIO_TOKEN!r}")
    return processor


def processor_windows(extractor: WhisperFeatureExtractor, wav: np.ndarray) -> torch.Tensor:
    """``VoxtralProcessor``'s own audio path on one clip, with its default audio settings (the waveform zero-padded
    to whole 30 s, cut into ``max_source_positions`` frames): ``[K, n_mels, 3000]``, the windows the model gets."""
    processor = voxtral_processor(extractor)
    merge = processor._merge_kwargs
    takes_class = "ModelProcessorKwargs" in inspect.signature(merge).parameters  # transformers 5.14 does
    defaults = merge(VoxtralProcessorKwargs) if takes_class else merge()
    kwargs = dict(defaults["audio_kwargs"])
    max_source_positions = kwargs.pop("max_source_positions")
    return processor._retrieve_input_features([np.asarray(wav, dtype=np.float32)], max_source_positions, **kwargs)


@register
class Voxtral(WhisperHiddenStates):
    name = "voxtral"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"voxtral": ("audio_config",), "voxtral_encoder": ()}
    weight_prefixes = ("audio_tower.", "model.audio_tower.", "")
    encoder_class = VoxtralEncoder
    config_class = VoxtralEncoderConfig
    default_features = LARGE_V3_FEATURES
    num_layers_key = "num_hidden_layers"  # VoxtralEncoderConfig's names (encoder_layers / d_model are aliases)
    hidden_dim_key = "hidden_size"
    returns = "audio tower rows holding the clip (50 Hz, before Voxtral's 4-row reshape and projector)"
    oracle_path = (
        "WhisperFeatureExtractor with VoxtralProcessor's padding (whole 30 s windows) -> "
        "VoxtralModel.get_audio_features(...).last_hidden_state per window, rows by Whisper's length helper"
    )

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        hidden = VoxtralModel.get_audio_features(self.projector_free(encoder), windows).last_hidden_state
        rows = WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames)
        return select_rows(hidden, rows)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """``VoxtralModel.get_audio_features(..., output_hidden_states=True)`` per window, rows by Whisper's helper."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        out = VoxtralModel.get_audio_features(self.projector_free(encoder), windows, output_hidden_states=True)
        states = pick_hidden_states(out.hidden_states, layers, len(encoder.layers))
        return window_rows_of(states, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames))

    @staticmethod
    def projector_free(encoder: PreTrainedModel) -> ProjectorFreeHost:
        """A host for ``get_audio_features`` whose projector is the identity and whose reshape keeps the rows
        (``intermediate_size`` read as ``d_model``): its ``last_hidden_state`` is then the tower's."""
        width = SimpleNamespace(intermediate_size=encoder.config.d_model)
        return ProjectorFreeHost(encoder, SimpleNamespace(return_dict=True, audio_config=width))


class VoxtralLM(Voxtral):
    """Voxtral's ``returns="lm"``: ``get_audio_features(...).pooler_output``, the tower's windows whole, 4 rows
    reshaped into one and the model's ``multi_modal_projector`` (see the module docstring)."""

    mode = "lm"
    encoder_class = VoxtralAudioTower
    config_class = VoxtralConfig
    weight_prefixes = PROJECTOR_LAYOUTS  # the hub's names, then transformers 5.x's
    returns = (
        "VoxtralModel.get_audio_features(...).pooler_output: every 30 s window whole, 4 rows reshaped into one "
        "and projected to the LM width (12.5 Hz, 375 per window)"
    )
    oracle_path = (
        "VoxtralProcessor's audio path (_retrieve_input_features: whole 30 s windows) -> "
        "VoxtralModel.get_audio_features(...).pooler_output on our tower and projector; placeholders: 375 per "
        "processor window (mistral-common's count, which needs its hub tokenizer)"
    )

    rows = staticmethod(voxtral_lm_rows)

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        """The whole ``VoxtralConfig`` dict: the model's config with ``audio_config`` = ``encoder_config``."""
        return whole_model_config(
            self.name, MODEL_TYPE, encoder_config, model_config, "projector_hidden_act and text_config.hidden_size",
            model="Voxtral model",
        )  # fmt: skip

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The LM width, ``text_config.hidden_size`` of the module config."""
        return int(encoder_config["text_config"]["hidden_size"])

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The tower on every window of every clip (silence-padded, :meth:`window_forward`), all 1500 rows of each,
        reshaped 4 rows into one and projected: ``[B, M_max, n_mels]`` -> ``[sum 375 * windows, LM width]``."""
        check_reshape(encoder.config)
        hidden, _ = self.window_forward(encoder.audio_tower, mel, lengths)  # [K, 1500, d_model]
        return encoder.multi_modal_projector(hidden.reshape(-1, encoder.config.audio_config.intermediate_size))

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """The tower's (:func:`whisper_style_flops`) plus the projector's two matmuls on every LM row:
        ``2 rows (intermediate_size H + H^2)`` for the LM width ``H``."""
        if isinstance(config, Mapping):
            config = VoxtralConfig.from_dict(dict(config))
        width, projected = config.text_config.hidden_size, config.audio_config.intermediate_size
        rows = int(voxtral_lm_rows(torch.as_tensor(lengths)).sum())
        return whisper_style_flops(config.audio_config, lengths) + FLOPS_PER_MAC * rows * (projected + width) * width

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """``VoxtralProcessor``'s windows for the clip side by side (:func:`processor_windows`):
        ``([1, n_mels, K * 3000], K * 3000)``; the processor gives no mask, every window it returns is the clip's."""
        windows = processor_windows(extractor, wav)  # [K, n_mels, 3000]
        return torch.cat(list(windows), dim=1)[None], windows.shape[0] * WINDOW_FRAMES

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's ``VoxtralModel.get_audio_features(...).pooler_output`` on our tower and projector, on the windows
        holding at least one frame of each clip (as the processor cuts them), all their rows."""
        windows, _ = hf_windows(input_features, frames, WINDOW_FRAMES)
        return VoxtralModel.get_audio_features(encoder, windows).pooler_output

    def hf_placeholders(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> int:
        """375 audio tokens per window of ``VoxtralProcessor``'s audio path for the clip (see the module docstring:
        mistral-common's tokenizer writes them, from its 12.5 Hz ``frame_rate`` and 30 s chunks)."""
        return TOKENS_PER_WINDOW * int(processor_windows(extractor, wav).shape[0])


Voxtral.lm_view = VoxtralLM
