"""Qwen3-ASR audio tower (``model.audio_tower.*`` of Qwen/Qwen3-ASR-1.7B and -0.6B, transformers' layout).

The AuT encoder of Qwen3-Omni (:mod:`contaudio.encoders.qwen3_omni`): the mel is cut into
100-frame chunks, three ``k3 s2`` Conv2d per chunk (13 rows per full chunk), attention within
windows of ``n_window_infer`` frames, then ``ln_post``. Two differences from Qwen3-Omni's tower:
the projection to the LM width is a separate ``multi_modal_projector`` (not part of the tower),
and HF's forward pads *every* chunk to 100 frames, so a clip under 1 s is convolved at width 100
too. The frames past a clip's end inside its last chunk are zeros when the clip is alone (the
extractor pads the frame axis with 0.0); in a batched HF call they would be the next frames of
the feature tensor, so the clip alone is the reference, and :func:`qwen3_asr_forward` gives it
in any batch. The tower takes any length (long-form audio): rows grow by 13 per second.

Features: :class:`~contaudio.features.qwen3_asr.Qwen3ASRFeatures` (``max(N, 8000) // 160`` frames:
a clip under 0.5 s is zero-padded to 0.5 s by the extractor, and those 50 frames are valid).

Modes (``returns=``), all ``f(M % 100) + 13 (M // 100)`` rows as for Qwen3-Omni (13 per second; the projector
and ``ln_post`` are row-wise):

- ``"lm"`` (the default, :class:`Qwen3ASRLM`): what ``Qwen3ASRModel.get_audio_features(...).pooler_output`` feeds
  the LM: the tower's rows through the model's ``multi_modal_projector`` (``linear_1 -> act -> linear_2``, to
  ``audio_config.output_dim``, the LM width), as many as the audio placeholders ``Qwen3ASRProcessor`` writes.
  transformers' conversion moved the projector out of Qwen's tower (``thinker.audio_tower.proj1/proj2`` in Qwen's
  own repos, ``multi_modal_projector.linear_1/linear_2`` in the ``-hf`` ones); both layouts load.
- ``"tower"``: the tower's rows (``ln_post`` output, ``d_model`` wide, before the projector).
- ``"hidden_states"``: HF's ``output_hidden_states`` entries of the tower (its layer stack's rows, before
  ``ln_post``; ``capture_outputs(tie_last_hidden_states=False)`` in transformers 5.14 and 5.25 alike).

Oracle: ``Qwen3ASRFeatureExtractor`` as the processor calls it (``padding=True``, no truncation) on
the clip alone, then ``Qwen3ASRModel.get_audio_features`` on our modules, one clip per call (the tower returns
exactly the valid rows, its own ``_post_cnn_length``): ``last_hidden_state`` (tower), ``pooler_output`` (lm),
``hidden_states`` (with ``output_hidden_states=True``); for ``"lm"`` also the placeholder count of
``Qwen3ASRProcessor`` (built on the checkpoint's extractor and a tiny tokenizer) for a prompt with the clip alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.qwen3_asr.configuration_qwen3_asr import Qwen3ASRConfig, Qwen3ASREncoderConfig
from transformers.models.qwen3_asr.feature_extraction_qwen3_asr import Qwen3ASRFeatureExtractor
from transformers.models.qwen3_asr.modeling_qwen3_asr import (
    Qwen3ASREncoder,
    Qwen3ASRModel,
    Qwen3ASRMultiModalProjector,
    Qwen3ASRPreTrainedModel,
)
from transformers.models.qwen3_asr.processing_qwen3_asr import Qwen3ASRProcessor

from contaudio.encoders.oracle import ProjectorFreeHost, extract, frame_mask, pick_hidden_states
from contaudio.encoders.qwen3_omni import (
    CHUNK_FRAMES,
    aut_flops,
    aut_hidden_states,
    aut_layers,
    check_chunking,
    qwen3_omni_rows,
)
from contaudio.encoders.registry import PROJECTOR_LAYOUTS, EncoderFamily, IntOrTensor, register
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.encoders.windows import check_whole_model_config
from contaudio.features.qwen3_asr import Qwen3ASRFeatures
from contaudio.lengths import ceil_div

QWEN3_ASR_FEATURES = Qwen3ASRFeatures(feature_size=128, chunk_length=30)
MODEL_TYPE = "qwen3_asr"  # config.json's model_type of a whole Qwen3-ASR model (transformers' and Qwen's own)
THINKER_KEY = "thinker_config"  # Qwen's own repos nest the model's config (audio, text, token ids) under it
TOWER_PARTS = ("conv2d1", "conv2d2", "conv2d3", "conv_out", "layers", "ln_post")  # the tower's own modules
# Qwen's own tower holds the projector as proj1/proj2 (its act between them); transformers' conversion names them so
QWEN_PROJECTOR = {"proj1.": "linear_1.", "proj2.": "linear_2."}
# the tokens Qwen3ASRProcessor reads off its tokenizer by name (Qwen3-ASR's tokenizer: Qwen's special tokens)
PROCESSOR_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                    "audio_eos_token": "<|audio_end|>"}  # fmt: skip


def full_chunk_widths(lengths: torch.Tensor, clip_of_chunk: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """HF's Qwen3-ASR forward pads every chunk to ``chunk_frames``, a clip's only chunk included.

    >>> full_chunk_widths(torch.tensor([250, 37]), torch.tensor([0, 0, 0, 1]), 100).tolist()
    [100, 100, 100, 100]
    """
    return torch.full_like(clip_of_chunk, chunk_frames)


def qwen3_asr_forward(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The tower on a padded batch, each clip as HF gives it alone: ``[B, M_max, n_mels]`` -> ``[sum rows, d_model]``.

    One conv-stack call over every chunk of the batch (all 100 frames wide, zeros past each clip's
    end), the layers ONCE over the packed rows, then ``ln_post``.
    """
    return encoder.ln_post(aut_layers(encoder, mel, lengths, full_chunk_widths))


def qwen3_asr_lm_forward(encoder: nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """:func:`qwen3_asr_forward` on ``encoder.audio_tower``, then HF's ``multi_modal_projector`` (row-wise):
    ``[B, M_max, n_mels]`` -> ``[sum rows, output_dim]``, what ``get_audio_features(...).pooler_output`` gives."""
    return encoder.multi_modal_projector(qwen3_asr_forward(encoder.audio_tower, mel, lengths))


@register
class Qwen3ASR(EncoderFamily):
    name = "qwen3_asr"
    config_paths: ClassVar[dict[str, tuple[tuple[str, ...], ...] | tuple[str, ...]]] = {
        "qwen3_asr": (("audio_config",), ("thinker_config", "audio_config")),  # transformers' -hf repos; Qwen's own
        "qwen3_asr_audio_encoder": (),  # the audio config of Qwen's own repos, saved alone
        "qwen3_asr_encoder": (),
    }
    weight_prefixes = (
        "model.audio_tower.",
        "audio_tower.",
        # Qwen's own repos (Qwen/Qwen3-ASR-*): the tower under thinker.audio_tower, whose proj1/proj2 there are the
        # projector (transformers' model.multi_modal_projector), so only the tower's own modules are named
        {f"thinker.audio_tower.{part}.": f"{part}." for part in TOWER_PARTS},
        "",
    )
    encoder_class = Qwen3ASREncoder
    config_class = Qwen3ASREncoderConfig
    output_dim_key = "d_model"
    default_features = QWEN3_ASR_FEATURES
    returns = "audio tower rows of the clip alone (ln_post, 13 per second, d_model wide, before the projector)"
    oracle_path = (
        "Qwen3ASRFeatureExtractor(padding=True) on the clip alone -> Qwen3ASRModel.get_audio_features"
        "(...).last_hidden_state, one clip per call (the tower returns exactly its valid rows)"
    )

    head_modules = ("ln_post",)  # after the layer stack

    graph_stack = True  # the layers run through packed.run_windowed_stack
    rows = staticmethod(qwen3_omni_rows)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return qwen3_asr_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return aut_flops(config, lengths, pad_short_clips=True, projection=False)

    def hf_inputs(self, extractor: Qwen3ASRFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        return extract(extractor, wav, padding=True, truncation=False)

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M_max, n_mels]`` -> ``[B, n_mels, F]`` with F a whole number of chunks and zeros past each clip
        (the extractor pads the frame axis with 0.0): each clip as HF's forward sees it alone."""
        width = int(ceil_div(mel.shape[1], CHUNK_FRAMES)) * CHUNK_FRAMES
        valid = torch.arange(width, device=mel.device) < lengths.to(mel.device)[:, None]  # [B, F]
        features = F.pad(mel, (0, 0, 0, width - mel.shape[1])).masked_fill(~valid[..., None], 0.0)
        return features.transpose(1, 2), lengths

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``Qwen3ASRModel.get_audio_features`` on our tower, one call for the batch (bench's HF column)."""
        check_chunking(encoder)
        mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
        return Qwen3ASRModel.get_audio_features(ProjectorFreeHost(encoder), input_features, mask).last_hidden_state

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """The layer stack's rows: the tower's (``ln_post`` is row-wise)."""
        return qwen3_omni_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """The AuT hidden states (:func:`~contaudio.encoders.qwen3_omni.aut_hidden_states`), every chunk 100 wide."""
        return aut_hidden_states(encoder, mel, lengths, full_chunk_widths, layers)

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """``Qwen3ASRModel.get_audio_features(..., output_hidden_states=True)`` on our tower: ``hidden_states[i]``."""
        check_chunking(encoder)
        mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
        out = Qwen3ASRModel.get_audio_features(
            ProjectorFreeHost(encoder), input_features, mask, output_hidden_states=True
        )
        return pick_hidden_states(out.hidden_states, layers, len(encoder.layers))


# ------------------------------------------------------------------------------------------------ returns="lm"
class Qwen3ASRAudioTower(Qwen3ASRPreTrainedModel):
    """The audio half of ``Qwen3ASRModel``: its ``audio_tower`` and ``multi_modal_projector``, under transformers'
    names, built from the whole ``Qwen3ASRConfig`` (the projector reads ``audio_config``: ``d_model``,
    ``activation_function`` and ``output_dim``, the LM width); the language model is never built."""

    config: Qwen3ASRConfig

    def __init__(self, config: Qwen3ASRConfig) -> None:
        super().__init__(config)
        self.audio_tower = Qwen3ASREncoder(config.audio_config)
        self.multi_modal_projector = Qwen3ASRMultiModalProjector(config)
        self.post_init()


def qwen_projector_layout(checkpoint: str) -> dict[str, str]:
    """Qwen's own layout (tower and projector both under ``checkpoint``, e.g. ``thinker.audio_tower.``) as
    ``{checkpoint prefix: module prefix}`` for :class:`Qwen3ASRAudioTower`.

    >>> qwen_projector_layout("t.")["t.proj1."], qwen_projector_layout("t.")["t.ln_post."]
    ('multi_modal_projector.linear_1.', 'audio_tower.ln_post.')
    """
    tower = {f"{checkpoint}{part}.": f"audio_tower.{part}." for part in TOWER_PARTS}
    return tower | {f"{checkpoint}{ours}": f"multi_modal_projector.{theirs}" for ours, theirs in QWEN_PROJECTOR.items()}


def qwen3_asr_processor(extractor: Qwen3ASRFeatureExtractor) -> Qwen3ASRProcessor:
    """HF's ``Qwen3ASRProcessor`` around the checkpoint's extractor and a tiny tokenizer holding the audio tokens it
    reads by name (:data:`PROCESSOR_TOKENS`): its own audio path and placeholder expansion, no hub tokenizer."""
    return Qwen3ASRProcessor(extractor, tiny_tokenizer(list(PROCESSOR_TOKENS.values()), named=PROCESSOR_TOKENS))


def lm_module_config(encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
    """The ``Qwen3ASRConfig`` dict of the tower and projector: the model's config (Qwen's own repos: its
    ``thinker_config``) with ``audio_config`` = ``encoder_config`` (as transformers names its type) and
    ``text_config`` cut to the LM width (``hidden_size``), all the projector's side of the model needs.

    >>> lm_module_config({"d_model": 8}, {"model_type": "qwen3_asr", "thinker_config": {
    ...     "text_config": {"hidden_size": 16, "model_type": "qwen3"}, "audio_token_id": 3}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'audio_token_id': 3, 'model_type': 'qwen3_asr', 'audio_config': {'d_model': 8, 'model_type': 'qwen3_asr_encoder'},
     'text_config': {'hidden_size': 16}}
    """
    whole = check_whole_model_config(
        "qwen3_asr", MODEL_TYPE, model_config, "text_config.hidden_size, the LM width", model="Qwen3-ASR model"
    )
    model = whole.get(THINKER_KEY, whole)
    width = (model.get("text_config") or {}).get("hidden_size")
    if width is None:
        raise ValueError(
            "qwen3_asr: the model config has no text_config.hidden_size (the LM width), which returns='lm' needs; "
            "add it to the card's model_config, or use returns='tower'"
        )
    config = {key: value for key, value in model.items() if key not in (THINKER_KEY, "audio_config", "text_config")}
    audio = {**encoder_config, "model_type": Qwen3ASREncoderConfig.model_type}
    return {**config, "model_type": MODEL_TYPE, "audio_config": audio, "text_config": {"hidden_size": width}}


def audio_config_of(config: Mapping[str, Any] | Any) -> Mapping[str, Any] | Any:
    """The audio config inside a whole Qwen3-ASR config (a ``Qwen3ASRConfig`` or its dict)."""
    return config["audio_config"] if isinstance(config, Mapping) else config.audio_config


class Qwen3ASRLM(Qwen3ASR):
    """Qwen3-ASR's ``returns="lm"``: ``Qwen3ASRModel.get_audio_features(...).pooler_output``, the tower's rows through
    the model's ``multi_modal_projector`` (see the module docstring)."""

    mode = "lm"
    encoder_class = Qwen3ASRAudioTower
    config_class = Qwen3ASRConfig
    weight_prefixes = (
        *PROJECTOR_LAYOUTS,  # transformers' names (the hub's, then 5.x's)
        qwen_projector_layout("thinker.audio_tower."),  # Qwen's own repos: the projector inside the tower
    )
    returns = (
        "Qwen3ASRModel.get_audio_features(...).pooler_output of the clip alone: the tower's rows through "
        "multi_modal_projector (13 per second, the LM width)"
    )
    oracle_path = (
        "Qwen3ASRFeatureExtractor(padding=True) on the clip alone -> Qwen3ASRModel.get_audio_features"
        "(...).pooler_output on our tower and projector, one clip per call; placeholders: Qwen3ASRProcessor's"
    )

    def module_config(self, encoder_config: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
        return lm_module_config(encoder_config, model_config)

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """The projector's output width (``audio_config.output_dim``: the LM width) of the module config."""
        return int(encoder_config["audio_config"]["output_dim"])

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return qwen3_asr_lm_forward(encoder, mel, lengths)

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """The tower's, plus the projector's two matmuls per row (``2 (d^2 + d output_dim)``)."""
        return aut_flops(audio_config_of(config), lengths, pad_short_clips=True, projection=True)

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``Qwen3ASRModel.get_audio_features(...).pooler_output`` on our tower and projector (bench's HF column)."""
        check_chunking(encoder.audio_tower)
        mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
        return Qwen3ASRModel.get_audio_features(encoder, input_features, mask).pooler_output

    def hf_placeholders(self, extractor: Qwen3ASRFeatureExtractor, wav: np.ndarray) -> int:
        """The ``audio_token`` count ``Qwen3ASRProcessor`` writes into a prompt holding the clip alone."""
        processor = qwen3_asr_processor(extractor)
        out = processor(text=processor.audio_token, audio=np.asarray(wav, dtype=np.float32), return_tensors="pt")
        return int((out["input_ids"] == processor.audio_token_id).sum())


Qwen3ASR.lm_view = Qwen3ASRLM
