"""Fixed-window encoders (Whisper, Qwen2-Audio, Voxtral, Audio Flamingo 3, GLM-ASR): each clip padded to 30 s windows.

The generic machinery of the Whisper-architecture families: the window, the silence padding,
the long-clip policy, HF's window layout and the FLOP rule of a Whisper-style window.

These encoders take exactly ``window_frames`` (3000) mel frames. HF's
processors zero-pad the *waveform* to 30 s, so every frame after the clip is the
log-mel of silence: the extractor's floor ``max(peak - 8, -10)`` in log10 units,
``max(peak' - 2, -1.5)`` after its ``(x + 4) / 4`` rescale, where ``peak'`` is
the clip's largest rescaled value. We pad each clip's valid frames with that
level (see :func:`silence_level`) and keep only the rows that hold the clip
(the family's length rule). The only frames that differ from the extractor's
padded output are the <= 2 frames whose STFT window straddles the clip's end
(they are computed from the clip in HF and are silence here): a clip that ends in
>= ``n_fft // 2`` samples of silence, as speech does, is encoded exactly as HF's
pipeline encodes it; a clip cut off loud moves every row a little (full attention).

A clip longer than the window follows an explicit policy (``ContinuousAudioIO(long_clip=...)``):

- ``"raise"`` (default): :class:`ClipTooLongError`, which says how to change it;
- ``"windows"``: the clip's mel is cut into consecutive windows of ``window_frames``
  (the last one padded with the clip's silence level), each encoded on its own, and
  their valid rows concatenated. The family's length rule counts exactly these rows.

Audio Flamingo 3's and GLM-ASR's processors cut the *waveform* into 30 s pieces and extract each one
on its own: contaudio cuts the same way (``cuts_waveform``), and their oracle is the processor itself
(:class:`ProcessorWindowFamily`, :func:`run_processor`), which also gives the number of audio
placeholders it writes into the prompt for the clip (:func:`placeholder_count`).
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, ProcessorMixin, WhisperFeatureExtractor

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, block_macs, config_value
from contaudio.encoders.oracle import OracleRows, ask_hf, extract, frame_mask, select_rows
from contaudio.encoders.registry import EncoderFamily, IntOrTensor
from contaudio.encoders.tokenizers import tiny_tokenizer
from contaudio.features import DYNAMIC_RANGE, LOG_FLOOR, LOG_OFFSET, LOG_SCALE, FeatureConfig, Featurizer
from contaudio.lengths import ceil_div, conv_out, windowed_rows

WINDOW_FRAMES = 3000  # max_source_positions (1500) * conv2 stride (2) = 30 s of 10 ms frames
# Whisper-large-v3's extractor (128 mels, 30 s), which Qwen2-Audio, Voxtral, Audio Flamingo 3 and GLM-ASR ship
LARGE_V3_FEATURES = FeatureConfig(sampling_rate=16000, feature_size=128, n_fft=400, hop_length=160, chunk_length=30)
WINDOW_CONV_STRIDE = 2  # conv1 stride 1, conv2 stride 2
WINDOW_CONV_KERNEL = 3

LongClipPolicy = Literal["raise", "windows"]
LONG_CLIP_POLICIES: tuple[str, ...] = ("raise", "windows")
SILENCE_BELOW_PEAK = DYNAMIC_RANGE / LOG_SCALE  # 2.0: the 80 dB clamp, in rescaled units
SILENCE_FLOOR = (math.log10(LOG_FLOOR) + LOG_OFFSET) / LOG_SCALE  # -1.5: log10(1e-10) rescaled


class ClipTooLongError(ValueError):
    """A clip is longer than a fixed-window encoder's window and the policy is ``"raise"``."""


def check_long_clip_policy(policy: str) -> LongClipPolicy:
    """Validate a ``long_clip`` policy name."""
    if policy not in LONG_CLIP_POLICIES:
        raise ValueError(f"long_clip must be one of {LONG_CLIP_POLICIES}, got {policy!r}")
    return policy  # type: ignore[return-value]


def check_clip_frames(
    family: EncoderFamily, mel_len: int | torch.Tensor, policy: LongClipPolicy, frames_per_second: float
) -> None:
    """Raise :class:`ClipTooLongError` if a clip exceeds ``family``'s window under ``policy="raise"``,
    or the family's ``max_frames`` (the most its model's processor passes on) under any policy.

    ``mel_len`` is one frame count (int) or a tensor of them. Encoders without a
    window (``window_frames=None``) accept any length up to ``max_frames``.
    """
    check_max_frames(family, mel_len, frames_per_second)
    window = family.window_frames
    if window is None or policy == "windows":
        return
    if isinstance(mel_len, torch.Tensor):
        too_long = mel_len > window
        if not bool(too_long.any()):
            return
        what = f"{int(too_long.sum())} clip(s) up to {int(mel_len.max())} frames"
    else:
        if mel_len <= window:
            return
        what = f"a clip of {mel_len} frames ({mel_len / frames_per_second:g} s)"
    seconds = f"{window / frames_per_second:g} s"
    raise ClipTooLongError(
        f"{family.name} encodes at most {window} mel frames ({seconds}) per clip; got {what}. "
        f"Pass long_clip='windows' to ContinuousAudioIO to encode consecutive {seconds} windows and "
        f"concatenate their rows, or keep clips within {seconds} (e.g. max_duration_s={window / frames_per_second:g})."
    )


def check_max_frames(family: EncoderFamily, mel_len: int | torch.Tensor, frames_per_second: float) -> None:
    """Raise :class:`ClipTooLongError` for a clip longer than the family's ``max_frames`` (never cut it)."""
    limit = family.max_frames
    if limit is None or (isinstance(mel_len, torch.Tensor) and mel_len.numel() == 0):
        return
    longest = int(mel_len.max()) if isinstance(mel_len, torch.Tensor) else int(mel_len)
    if longest <= limit:
        return
    seconds = f"{limit / frames_per_second:g} s"
    raise ClipTooLongError(
        f"{family.name} takes at most {limit} mel frames ({seconds}) per clip, what its processor passes to the "
        f"model (it drops the rest); got {longest} frames ({longest / frames_per_second:g} s). Split the clip "
        f"into pieces of <= {seconds}, or drop longer clips (max_duration_s={limit / frames_per_second:g})."
    )


def silence_level(mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, M_max, n_mels]`` + ``[B]`` -> ``[B]``: the value HF's extractor gives the silence after each clip.

    ``max(peak - 2, -1.5)`` with ``peak`` the largest value among the clip's
    valid frames (the extractor's clamp maximum, unless it sits in one of the
    <= 2 frames straddling the clip's end).
    """
    valid = torch.arange(mel.shape[1], device=mel.device) < lengths.to(mel.device)[:, None]  # [B, M_max]
    peak = mel.amax(dim=2).masked_fill(~valid, -torch.inf).amax(dim=1)  # [B]
    return (peak - SILENCE_BELOW_PEAK).clamp(min=SILENCE_FLOOR)


def split_into_windows(
    mel: torch.Tensor, lengths: torch.Tensor, window_frames: int, silence_per_window: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batch -> one row per window: ``[B, M_max, n_mels]``, ``[B]`` -> ``[K, W, n_mels]``, ``[K]``.

    Clip ``i`` becomes ``ceil(M_i / W)`` consecutive windows (one when it fits), in clip
    order; frames past the clip's end hold its :func:`silence_level`, whatever the padded
    batch held there: the clip's, or with ``silence_per_window`` its last window's own (for
    processors that cut the *waveform* into windows and extract each one on its own, see
    :class:`WindowedFeatures`). The second tensor gives each window's real frames (``W``
    for all but a clip's last window).
    """
    lengths = lengths.to(mel.device)
    span = int(ceil_div(lengths, window_frames).max()) * window_frames
    mel = F.pad(mel, (0, 0, 0, span - mel.shape[1])) if mel.shape[1] < span else mel[:, :span]
    windows = mel.reshape(mel.shape[0], -1, window_frames, mel.shape[2])  # [B, max windows, W, n_mels]
    real = window_frame_counts(lengths, windows.shape[1], window_frames)  # [B, max windows]
    keep = real > 0
    windows, real = windows[keep], real[keep]  # [K, W, n_mels], [K]
    clip_of_window = keep.nonzero()[:, 0]  # [K]
    level = silence_level(windows, real) if silence_per_window else silence_level(mel, lengths)[clip_of_window]
    valid = torch.arange(window_frames, device=mel.device) < real[:, None]  # [K, W]
    return torch.where(valid[..., None], windows, level.to(mel.dtype)[:, None, None]), real


def window_frame_counts(lengths: torch.Tensor, windows: int, window_frames: int) -> torch.Tensor:
    """Real frames of each of ``windows`` consecutive windows per clip: ``[B]`` -> ``[B, windows]``.

    >>> window_frame_counts(torch.tensor([7, 2]), 3, 3).tolist()
    [[3, 3, 1], [2, 0, 0]]
    """
    starts = torch.arange(windows, device=lengths.device) * window_frames
    return (lengths[:, None] - starts).clamp(min=0, max=window_frames)


def hf_windows(
    input_features: torch.Tensor, frames: torch.Tensor, window_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-layout features -> the windows HF's encoder takes, as Voxtral's processor cuts them.

    ``[B, n_mels, k * W]`` and valid frames ``[B]`` -> ``[K, n_mels, W]`` windows and their valid
    frames ``[K]`` (windows holding no frame of their clip are dropped).
    """
    batch, n_mels, width = input_features.shape
    windows = input_features.reshape(batch, n_mels, width // window_frames, window_frames).transpose(1, 2)
    real = window_frame_counts(frames.to(input_features.device), windows.shape[1], window_frames)
    keep = real > 0
    return windows[keep], real[keep]


def whisper_style_flops(
    config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor, window_frames: int = WINDOW_FRAMES
) -> float:
    """FLOPs of a Whisper-style fixed-window encoder (Whisper, Qwen2-Audio, Voxtral) over clips of ``lengths`` frames.

    Every clip costs ``ceil(M / W)`` whole windows (the encoder computes the padding too: it
    attends over the full window). Per window of ``W`` frames and ``R = W // 2`` rows: conv1
    ``2 W n_mels 3 d``, conv2 ``2 R d 3 d``, and per layer ``2 R (4 d^2 + 2 d ffn) + 2 * 2 R^2 d``.
    Matmuls only; Qwen2-Audio's average pool and the final norm are not counted. HF config
    objects resolve aliases (Voxtral's ``hidden_size`` is ``d_model``).
    """
    d, ffn = config_value(config, "d_model"), config_value(config, "encoder_ffn_dim")
    layers, n_mels = config_value(config, "encoder_layers"), config_value(config, "num_mel_bins")
    rows = conv_out(window_frames, WINDOW_CONV_STRIDE)
    window = window_frames * n_mels * WINDOW_CONV_KERNEL * d + rows * d * WINDOW_CONV_KERNEL * d
    window += layers * (block_macs(rows, d, ffn) + attention_macs(rows, d))
    windows = int(ceil_div(torch.as_tensor(lengths), window_frames).sum())
    return float(FLOPS_PER_MAC * window * windows)


def check_window(encoder: torch.nn.Module, positions_key: str = "max_source_positions") -> None:
    """The length rules assume 1500 positions after a stride-2 conv: one 3000-frame window.

    ``positions_key``: the config key of the encoder's position count (GLM-ASR's rotary positions:
    ``max_position_embeddings``).
    """
    positions = getattr(encoder.config, positions_key)
    frames = positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    if frames != WINDOW_FRAMES:
        raise ValueError(
            f"{type(encoder).__name__} takes {frames} mel frames ({positions_key}={positions}); "
            f"contaudio's length rules need {WINDOW_FRAMES}"
        )


def window_conv_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows after conv2 for ``M <= 3000`` real frames of a window: ``(M - 1) // 2 + 1``, 0 for none."""
    return conv_out(mel_len, WINDOW_CONV_STRIDE)


def whisper_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows a Whisper-style encoder returns for ``M`` mel frames.

    Each clip is padded to one 3000-frame window; conv2 (stride 2) gives 1500 rows, of which
    ``(M - 1) // 2 + 1`` hold the clip. Clips longer than a window (``long_clip="windows"``)
    are consecutive windows: ``1500 * (M // 3000) + conv_out(M % 3000)``.

    >>> [whisper_rows(m) for m in (0, 1, 2, 3, 2999, 3000, 3001, 6000, 7501)]
    [0, 1, 1, 2, 1500, 1500, 1501, 3000, 3751]
    """
    return windowed_rows(mel_len, window_conv_rows, WINDOW_FRAMES)


class WindowFamily(EncoderFamily):
    """What every Whisper-architecture family shares (not registered itself): the 30 s window, the
    silence-padded forward keeping the clip's rows, the FLOP rule, and HF's extractor padding the
    waveform to whole windows (Voxtral's processor; Whisper's and Qwen2-Audio's for <= 30 s).

    ``cuts_waveform``: contaudio's side of a processor that cuts the *waveform* into 30 s pieces and
    extracts each on its own (Audio Flamingo 3, GLM-ASR): the featurizer cuts the same way
    (``waveform_window_s``) and each window is padded at its own silence level. The oracle of such a
    family is the processor itself (:class:`ProcessorWindowFamily`), whatever this flag says.
    ``positions_key``: the config key of the encoder's position count (see :func:`check_window`).
    """

    output_dim_key: ClassVar[str] = "d_model"
    window_frames: ClassVar[int | None] = WINDOW_FRAMES
    cuts_waveform: ClassVar[bool] = False
    positions_key: ClassVar[str] = "max_source_positions"
    rows = staticmethod(whisper_rows)

    def adapt_features(self, features: Featurizer) -> Featurizer:
        """With ``cuts_waveform``: each 30 s piece of the waveform gets its own log-mel, as the processor does."""
        if not self.cuts_waveform:
            return features
        if not isinstance(features, FeatureConfig):
            raise ValueError(f"{self.name} needs WhisperFeatureExtractor features, got {type(features).__name__}")
        return replace(features, waveform_window_s=features.chunk_length)

    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """HF's encoder on each clip padded to its window(s) with silence: ``[B, M_max, n_mels]`` -> ``[rows, d]``."""
        hidden, frames = self.window_forward(encoder, mel, lengths)
        return select_rows(hidden, window_conv_rows(frames))

    def window_forward(
        self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HF's encoder on every window of every clip, padding rows included: ``[B, M_max, n_mels]``, ``[B]`` ->
        ``[K, 1500, d_model]`` (windows in clip order) and each window's real frames ``[K]``."""
        check_window(encoder, self.positions_key)
        windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, self.cuts_waveform)  # [K, 3000, n_mels]
        return encoder(windows.transpose(1, 2)).last_hidden_state, frames

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return whisper_style_flops(config, lengths)

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """HF's extractor as the processor runs it: the clip zero-padded to whole 30 s windows."""
        return extract(extractor, wav, padding="longest", pad_to_multiple_of=extractor.n_samples, truncation=False)


@dataclass(frozen=True)
class ProcessorAudio:
    """What a model's HF processor gives for one clip in a prompt.

    input_features: ``[K, n_mels, W]``, the clip's windows as the model's forward receives them;
    input_features_mask: ``[K, W]``, their valid frames; placeholders: the audio tokens the processor
    wrote into the prompt for the clip (the rows the LM expects).
    """

    input_features: torch.Tensor
    input_features_mask: torch.Tensor
    placeholders: int


def run_processor(processor: ProcessorMixin, wav: np.ndarray) -> ProcessorAudio:
    """HF's processor (Audio Flamingo 3's, GLM-ASR's) on a prompt holding one audio placeholder and the clip.

    Runs the processor's own audio path: its cut of the waveform into windows, its extractor call, its
    masks and its placeholder expansion; ``wav`` is mono at the extractor's sampling rate.
    """
    rate = processor.feature_extractor.sampling_rate
    out = processor(text=processor.audio_token, audio=wav, sampling_rate=rate)
    placeholders = int((out["input_ids"] == processor.audio_token_id).sum())
    return ProcessorAudio(out["input_features"], out["input_features_mask"], placeholders)


def placeholder_count(processor: ProcessorMixin, wav: np.ndarray) -> int:
    """The audio placeholders HF's ``processor`` puts into a prompt for the clip ``wav`` (see :func:`run_processor`)."""
    return run_processor(processor, wav).placeholders


def whole_model_config(
    family: str,
    model_type: str,
    encoder_config: dict[str, Any],
    model_config: dict[str, Any] | None,
    reads: str,
    model: str = "model",
) -> dict[str, Any]:
    """The config dict of a model's audio half with its projector (``returns="lm"``): ``model_config`` (the
    checkpoint's config.json, or a card's ``model_config``) with its ``audio_config`` set to ``encoder_config``.

    ``reads``: what the projector takes from the model's config, for the error raised when ``model_config`` is not
    a whole ``model_type`` model's (a bare audio-encoder export, or a card without ``model_config``).
    ``model``: how the error names the model ("Voxtral model").

    >>> whole_model_config("x", "xm", {"model_type": "xe"}, {"model_type": "xm", "text_config": {"hidden_size": 8}},
    ...                    "text_config.hidden_size")
    {'model_type': 'xm', 'text_config': {'hidden_size': 8}, 'audio_config': {'model_type': 'xe'}}
    """
    whole = check_whole_model_config(family, model_type, model_config, reads, model)
    return {**whole, "audio_config": dict(encoder_config)}


def check_whole_model_config(
    family: str, model_type: str, model_config: dict[str, Any] | None, reads: str, model: str = "model"
) -> dict[str, Any]:
    """``model_config`` when it is a whole ``model_type`` model's config; else the error
    :func:`whole_model_config` describes."""
    if model_config is None or model_config.get("model_type") != model_type:
        found = "no model config" if model_config is None else f"model_type {model_config.get('model_type')!r}"
        raise ValueError(
            f"{family}: returns='lm' needs the whole {model}'s config (model_type {model_type!r}: its {reads}), but "
            f"this checkpoint or card has {found} (a bare audio-encoder export, or a card without 'model_config'). "
            "Use returns='tower' (the tower's rows) or returns='hidden_states', or load the whole model's checkpoint"
        )
    return model_config


class ProcessorWindowFamily(WindowFamily):
    """A 30 s family whose oracle runs the model's own HF processor (``processor_class``) on the clip: its cut of
    the waveform into windows, its extractor call and masks (Audio Flamingo 3, GLM-ASR, whose processors cut the
    waveform, see ``cuts_waveform``). The processor is built from the checkpoint's extractor and a
    :func:`~contaudio.encoders.tokenizers.tiny_tokenizer` holding its default audio token.

    A family fills in ``processor_class``, :meth:`hf_encode_windows` (HF's model path on the processor's windows
    and masks) and, for ``returns="hidden_states"``, :meth:`hf_hidden_windows`. Where this object's rows are the
    LM's (``mode == "lm"``), the oracle also keeps the placeholder count the processor wrote for the clip.
    """

    processor_class: ClassVar[type[ProcessorMixin]]

    @abstractmethod
    def hf_encode_windows(self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """HF's model path on a processor's output: ``input_features [K, n_mels, W]``, ``input_features_mask
        [K, W]`` -> the rows HF's code keeps, ``[sum rows, D]``."""

    def hf_hidden_windows(
        self, encoder: PreTrainedModel, windows: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """HF's model path with ``output_hidden_states=True`` on a processor's windows and masks: the rows HF's code
        keeps of its hidden states ``layers``, ``[len(layers), sum rows, d]``."""
        raise NotImplementedError(f"{self.name}: returns='hidden_states' has no HF oracle yet")

    def hf_processor(self, extractor: WhisperFeatureExtractor) -> ProcessorMixin:
        """``processor_class`` around ``extractor`` and a tiny tokenizer holding the processor's default audio token."""
        audio_token = inspect.signature(self.processor_class).parameters["audio_token"].default
        return self.processor_class(extractor, tiny_tokenizer([audio_token]))

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """The processor's features for the clip, its windows side by side: ``([1, n_mels, K * W], valid frames)``."""
        audio = run_processor(self.hf_processor(extractor), wav)
        features = torch.cat(list(audio.input_features), dim=1)[None]  # [1, n_mels, K * W]
        return features, int(audio.input_features_mask.sum())

    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Whole-window features (``[B, n_mels, k * W]``, valid frames ``[B]``) cut into the windows and masks the
        processor gives a clip of that many frames, then :meth:`hf_encode_windows`."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        return self.hf_encode_windows(encoder, windows, frame_mask(window_frames, WINDOW_FRAMES))

    def hf_hidden_states(
        self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor, layers: tuple[int, ...]
    ) -> torch.Tensor:
        """:meth:`hf_encode`'s windows and masks (from :meth:`hf_inputs`: the processor's), then
        :meth:`hf_hidden_windows`: ``[len(layers), sum rows, d]``."""
        windows, window_frames = hf_windows(input_features, frames, WINDOW_FRAMES)
        return self.hf_hidden_windows(encoder, windows, frame_mask(window_frames, WINDOW_FRAMES), layers)

    def hf_placeholders(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> int | None:
        """The audio placeholders the processor writes for the clip (:func:`placeholder_count`) where this object's
        rows are the LM's (``mode == "lm"``); None otherwise (the tower's rows, before the model's projector)."""
        return placeholder_count(self.hf_processor(extractor), wav) if self.mode == "lm" else None

    def oracle(self, encoder: PreTrainedModel, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> OracleRows:
        """HF's processor on the clip, then HF's model path on its windows and masks; in ``"lm"`` mode the answer
        also keeps the placeholder count of that same processor call (None when HF raised)."""
        processor = self.hf_processor(extractor)
        ran: list[ProcessorAudio] = []

        def ask() -> torch.Tensor:
            ran.append(run_processor(processor, wav))
            features = ran[0].input_features.to(encoder.device, encoder.dtype)
            return self.hf_encode_windows(encoder, features, ran[0].input_features_mask.to(encoder.device))

        answer = ask_hf(ask)
        if answer.error is None and self.mode == "lm":
            return replace(answer, placeholders=ran[0].placeholders)
        return answer
