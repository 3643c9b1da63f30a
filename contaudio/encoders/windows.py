"""Fixed-window encoders (Whisper, Qwen2-Audio): each clip padded to one 30 s window.

These encoders take exactly ``window_frames`` (3000) mel frames. HF's
processors zero-pad the *waveform* to 30 s, so every frame after the clip is the
log-mel of silence: the extractor's floor ``max(peak - 8, -10)`` in log10 units,
``max(peak' - 2, -1.5)`` after its ``(x + 4) / 4`` rescale, where ``peak'`` is
the clip's largest rescaled value. We pad each clip's valid frames with that
level (see :func:`silence_level`) and keep only the rows that hold the clip
(the family's length rule). The only frames that differ from the extractor's
padded output are the <= 2 frames whose STFT window straddles the clip's end
(they are computed from the clip in HF and are silence here).

A clip longer than the window follows an explicit policy (``ContinuousAudioIO(long_clip=...)``):

- ``"raise"`` (default): :class:`ClipTooLongError`, which says how to change it;
- ``"windows"``: the clip's mel is cut into consecutive windows of ``window_frames``
  (the last one padded with the clip's silence level), each encoded on its own, and
  their valid rows concatenated. The family's length rule counts exactly these rows.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from contaudio.encoders.registry import EncoderFamily
from contaudio.features import DYNAMIC_RANGE, LOG_FLOOR, LOG_OFFSET, LOG_SCALE
from contaudio.lengths import ceil_div

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
    """Raise :class:`ClipTooLongError` if a clip exceeds ``family``'s window under ``policy="raise"``.

    ``mel_len`` is one frame count (int) or a tensor of them. Encoders without a
    window (``window_frames=None``) accept any length.
    """
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
    mel: torch.Tensor, lengths: torch.Tensor, window_frames: int, fill: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batch -> one row per window: ``[B, M_max, n_mels]``, ``[B]`` -> ``[K, W, n_mels]``, ``[K]``.

    Clip ``i`` becomes ``ceil(M_i / W)`` consecutive windows (one when it fits),
    in clip order; frames past the clip's end hold its :func:`silence_level`,
    whatever the padded batch held there (``fill=False``: the batch's own frames
    are kept where it has them, e.g. HF's extractor output padded to whole windows,
    and only frames past ``M_max`` are silence). The second tensor gives each
    window's real frames (``W`` for all but a clip's last window).
    """
    lengths = lengths.to(mel.device)
    level = silence_level(mel, lengths).to(mel.dtype)  # [B]
    kept = lengths[:, None] if fill else mel.shape[1]  # frames of the batch kept, per clip or for all
    span = int(ceil_div(lengths, window_frames).max()) * window_frames
    mel = F.pad(mel, (0, 0, 0, span - mel.shape[1])) if mel.shape[1] < span else mel[:, :span]
    valid = torch.arange(span, device=mel.device) < kept  # [B, span] (or [span] when not filling)
    filled = torch.where(valid[..., None], mel, level[:, None, None])  # [B, span, n_mels]
    windows = filled.reshape(mel.shape[0], -1, window_frames, mel.shape[2])  # [B, max windows, W, n_mels]
    starts = torch.arange(windows.shape[1], device=mel.device) * window_frames  # [max windows]
    real = (lengths[:, None] - starts).clamp(min=0, max=window_frames)  # [B, max windows]
    keep = real > 0
    return windows[keep], real[keep]
