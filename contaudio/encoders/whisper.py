"""Whisper encoder (``model.encoder.*`` of openai/whisper-large-v3, -small, -tiny, ...).

transformers has no encoder-only Whisper checkpoint type: the family is keyed on ``whisper``
(the whole encoder-decoder config builds the encoder), and the encoder tensors are read from
under ``model.encoder.`` (WhisperForConditionalGeneration), ``encoder.`` (WhisperModel /
WhisperForAudioClassification) or the bare keys of an encoder-only export.

The encoder takes exactly one 30 s window (3000 frames) and attends over all of it, padding
included (HF's WhisperEncoder has no attention mask): every clip is padded with the log-mel of
silence, as the extractor pads it (see :mod:`contaudio.encoders.windows`), and its
``(M - 1) // 2 + 1`` rows are kept (:func:`~contaudio.encoders.windows.whisper_rows`).

Returns: the encoder's ``last_hidden_state`` rows that hold the clip (50 Hz, ``d_model`` wide). Whisper
has no language model, so no ``returns="lm"``: ``returns=None`` means ``"tower"``.
Oracle: HF's extractor with the waveform zero-padded to whole 30 s windows (Whisper's processor
for clips of <= 30 s; longer clips as Voxtral's processor cuts them, Whisper's own truncates),
``WhisperEncoder`` on each window, rows selected by ``_get_feat_extract_output_lengths``.

``returns="hidden_states"`` (:class:`WhisperHiddenStates`, shared with Voxtral's Whisper tower): the same
rows of HF's ``output_hidden_states`` entries. In transformers 5.x (5.14 to 5.25, ``capture_outputs``) entry 0
is the first layer's input (GELU convs + learned positions), entry ``i`` layer ``i``'s output, and the last
entry is tied to ``last_hidden_state``: the last layer's output AFTER the final ``layer_norm``. So
``layer_norm`` stays when the last layer is asked for and becomes an identity otherwise (entries below the
last are the layers' raw outputs).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

from contaudio.encoders.oracle import pick_hidden_states, select_rows
from contaudio.encoders.registry import IntOrTensor, register
from contaudio.encoders.windows import (
    WINDOW_FRAMES,
    WindowFamily,
    check_window,
    hf_windows,
    split_into_windows,
    whisper_rows,
    window_conv_rows,
)
from contaudio.features import FeatureConfig

__all__ = ["WHISPER_FEATURES", "Whisper", "WhisperHiddenStates", "whisper_rows"]

WHISPER_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=80, n_fft=400, hop_length=160, chunk_length=30)


def embed_windows(encoder: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The first layer's input of a Whisper-style encoder (HF's ``hidden_states[0]``): ``[K, n_mels, W]`` 30 s
    windows -> ``[K, W // 2, d_model]``, GELU(conv1), GELU(conv2) and the learned positions, added in the
    positions' dtype and cast back to the convs' (Voxtral keeps its positions in float32; Whisper's share the
    model's dtype, so the cast changes nothing there)."""
    embeds = F.gelu(encoder.conv2(F.gelu(encoder.conv1(windows)))).transpose(1, 2)
    hidden = (embeds + encoder.embed_positions.weight[: embeds.shape[1]]).to(embeds.dtype)
    return F.dropout(hidden, p=encoder.dropout, training=encoder.training)


def window_hidden_states(
    encoder: nn.Module, windows: torch.Tensor, layers: tuple[int, ...], depth: int
) -> torch.Tensor:
    """HF's ``output_hidden_states`` entries ``layers`` of a Whisper-style encoder of ``depth`` layers on 30 s
    windows, running only the layers up to the deepest one asked for: ``[K, n_mels, W]`` -> ``[len(layers), K,
    W // 2, d_model]``.

    Entry 0 is :func:`embed_windows`, entry ``i`` layer ``i``'s output; entry ``depth`` (the model's last layer)
    goes through ``encoder.layer_norm``, as HF ties its last hidden state to ``last_hidden_state``.
    """
    wanted = set(layers)
    hidden = embed_windows(encoder, windows)
    states = {0: hidden} if 0 in wanted else {}
    for index, layer in enumerate(encoder.layers[: max(layers)], start=1):
        hidden = layer(hidden, None)
        if index in wanted:
            states[index] = hidden
    if depth in states:
        states[depth] = encoder.layer_norm(states[depth])
    return torch.stack([states[index] for index in layers])


def window_rows_of(states: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The first ``rows[k]`` rows of each window ``k`` of each layer: ``[L, K, R, d]``, ``[K]`` -> ``[L, sum rows, d]``.

    >>> window_rows_of(torch.arange(8.0).reshape(2, 2, 2, 1), torch.tensor([1, 2]))[:, :, 0].tolist()
    [[0.0, 2.0, 3.0], [4.0, 6.0, 7.0]]
    """
    keep = torch.arange(states.shape[2], device=states.device) < rows.to(states.device)[:, None]  # [K, R]
    return states[:, keep]


class WhisperHiddenStates(WindowFamily):
    """``returns="hidden_states"`` of a Whisper-architecture tower (Whisper, Voxtral): the clip's rows of each
    window (as ``"tower"`` keeps them), for HF's ``output_hidden_states`` entries (see the module docstring)."""

    final_norm = "layer_norm"  # after the stack; HF's last hidden state includes it

    def hidden_rows(self, mel_len: IntOrTensor) -> IntOrTensor:
        """Rows of each hidden state: the tower's, ``whisper_rows`` (50 Hz, the clip's own frames per window)."""
        return whisper_rows(mel_len)

    def hidden_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """Each clip padded to its window(s) with silence (as ``"tower"``), the layers run up to the deepest asked
        for (:func:`window_hidden_states`), the clip's rows kept: ``[len(layers), sum rows, d_model]``."""
        check_window(encoder, self.positions_key)
        windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, self.cuts_waveform)  # [K, 3000, n_mels]
        depth = int(getattr(encoder.config, self.num_layers_key))
        states = window_hidden_states(encoder, windows.transpose(1, 2), layers, depth)
        return window_rows_of(states, window_conv_rows(frames))


@register
class Whisper(WhisperHiddenStates):
    name = "whisper"
    config_paths: ClassVar[dict[str, tuple[str, ...]]] = {"whisper": ()}
    weight_prefixes = ("model.encoder.", "encoder.", "")
    encoder_class = WhisperEncoder
    config_class = WhisperConfig
    default_features = WHISPER_FEATURES
    lm_view = None  # an encoder without a language model: returns="tower" (its default), no "lm"
    returns = "WhisperEncoder last_hidden_state rows holding the clip (50 Hz, d_model wide)"
    oracle_path = (
        "WhisperFeatureExtractor (clip zero-padded to whole 30 s windows) -> WhisperEncoder per window, "
        "rows by WhisperPreTrainedModel._get_feat_extract_output_lengths"
    )

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's encoder on each 30 s window, rows selected by Whisper's own ``_get_feat_extract_output_lengths``."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        hidden = encoder(windows).last_hidden_state  # [K, 1500, d_model]
        return select_rows(hidden, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames))

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """HF's encoder with ``output_hidden_states=True`` on each 30 s window, rows by Whisper's own helper."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        hidden_states = encoder(windows, output_hidden_states=True).hidden_states  # each [K, 1500, d_model]
        states = pick_hidden_states(hidden_states, layers, len(encoder.layers))
        return window_rows_of(states, WhisperPreTrainedModel._get_feat_extract_output_lengths(encoder, window_frames))
