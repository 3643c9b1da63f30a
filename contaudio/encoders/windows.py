"""Fixed-window encoders (Whisper, Qwen2-Audio, Voxtral): each clip padded to one 30 s window.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, WhisperFeatureExtractor

from contaudio.benchmark import FLOPS_PER_MAC, attention_macs, block_macs, config_value
from contaudio.encoders.oracle import extract, select_rows
from contaudio.encoders.registry import EncoderFamily, IntOrTensor
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


def extract_per_window(extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
    """HF's extractor as the Audio Flamingo 3 / GLM-ASR processors run it: the waveform cut into consecutive
    ``n_samples`` (30 s) pieces, each extracted on its own with max_length padding, side by side.

    Returns ``([1, n_mels, k * 3000], valid frames)``.
    """
    starts = range(extractor.n_samples, len(wav), extractor.n_samples)
    pieces = [extract(extractor, piece, padding="max_length") for piece in np.split(wav, starts)]
    return torch.cat([features for features, _ in pieces], dim=2), sum(frames for _, frames in pieces)


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

    ``cuts_waveform``: the family's processor cuts the *waveform* into 30 s pieces and extracts each
    on its own (Audio Flamingo 3, GLM-ASR), so the featurizer does too (``waveform_window_s``), each
    window is padded at its own silence level, and the oracle extracts piece by piece.
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
        check_window(encoder, self.positions_key)
        windows, frames = split_into_windows(mel, lengths, WINDOW_FRAMES, self.cuts_waveform)  # [K, 3000, n_mels]
        hidden = encoder(windows.transpose(1, 2)).last_hidden_state  # [K, 1500, d_model]
        return select_rows(hidden, window_conv_rows(frames))

    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        return whisper_style_flops(config, lengths)

    def hf_inputs(self, extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """HF's extractor as the processor runs it: the clip zero-padded to whole 30 s windows, or with
        ``cuts_waveform`` each 30 s piece extracted on its own (:func:`extract_per_window`)."""
        if self.cuts_waveform:
            return extract_per_window(extractor, wav)
        return extract(extractor, wav, padding="longest", pad_to_multiple_of=extractor.n_samples, truncation=False)
