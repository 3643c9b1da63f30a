"""``ContinuousAudioIO``: audio -> LM positions (CPU) and mel batch -> encoder features (GPU)."""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from contaudio.audio import (
    AudioPolicy,
    ChannelPolicy,
    ResamplePolicy,
    check_layout,
    check_not_empty_after_resampling,
    prepare_waveform,
)
from contaudio.encoders import EncoderSource, build_encoder, resolve
from contaudio.encoders.loading import WeightsMode
from contaudio.encoders.windows import LongClipPolicy, check_clip_frames, check_long_clip_policy
from contaudio.features import log_mel, log_mel_batch
from contaudio.lengths import mel_frames, resampled_length

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
ATTN_IMPLEMENTATIONS = (None, "sdpa", "eager", "flash_attention_2")
ENCODER_CHOICES = ("huggingface",)
DUMMY_FRAMES = 4  # mel frames for dummy_forward: the fewest that give every family >= 1 row


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` (and fp16, fp32) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def parse_device(device: str | torch.device) -> torch.device:
    """Check that ``device`` (cpu, cuda, cuda:N) exists on this machine."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif parsed.type != "cpu":
        raise ValueError(f"unsupported device type {parsed.type!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return parsed


def check_attn_implementation(attn_implementation: str | None, device: torch.device) -> str | None:
    """Validate the attention kernel name and that it can run on ``device``."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if device.type != "cuda" or not is_flash_attn_2_available():
            raise ValueError(
                "attn_implementation='flash_attention_2' needs a CUDA device and the flash-attn package "
                "(pip install flash-attn); use 'sdpa' instead"
            )
    return attn_implementation


class AbsIO(nn.Module, ABC):
    """What a speech LM needs from a modality I/O: LM positions for a sample, and features."""

    @abstractmethod
    def preprocess(self, data: Any) -> tuple[np.ndarray, Any, np.ndarray]:
        """Sample -> ``(token seq [T, 1], continuous features, loss mask [T, 1])``."""

    @abstractmethod
    def find_length(self, data: Any, before_length: Any = None) -> Any:
        """LM positions ``T`` that ``preprocess`` would reserve, without doing the work."""

    @abstractmethod
    def feature_dim(self) -> int:
        """Width of each feature row."""

    @abstractmethod
    def copy_for_worker(self) -> AbsIO:
        """A light, picklable copy for data-loader workers (no weights)."""


class ContinuousAudioIO(AbsIO):
    """Continuous audio features from a pretrained audio encoder.

    Args:
        encoder_choice: only ``"huggingface"`` (transformers modules).
        encoder_hf_model_tag: hub id, local checkpoint directory, or shipped card name
            (e.g. ``"contaudio/tiny-qwen2.5-omni"``).
        attn_implementation: None (transformers' default), "sdpa", "eager" or "flash_attention_2".
        dtype: "bfloat16"/"bf16", "float16"/"fp16" or "float32"/"fp32".
        device: "cpu", "cuda" or "cuda:N".
        weights: "pretrained" (load real weights) or "random" (seeded random init, no download).
        revision: hub revision to load.
        seed: seed of the random init.
        resample: "resample" (soxr, logged once) or "raise" on sample-rate mismatch.
        multichannel: "average" (logged once) or "raise" for C > 1.
        max_duration_s: clips longer than this raise (None: no limit).
        normalize: zero-mean/unit-variance the waveform (off, as in Qwen's processor).
        long_clip: fixed-window encoders (Whisper, Qwen2-Audio: 30 s) on a longer clip:
            "raise" (default) or "windows" (encode consecutive 30 s windows, concatenate rows).
    """

    def __init__(
        self,
        encoder_choice: str = "huggingface",
        encoder_hf_model_tag: str = "Qwen/Qwen2.5-Omni-7B",
        attn_implementation: str | None = None,
        dtype: str = "bfloat16",
        device: str = "cpu",
        *,
        weights: WeightsMode = "pretrained",
        revision: str | None = None,
        seed: int = 0,
        resample: ResamplePolicy = "resample",
        multichannel: ChannelPolicy = "average",
        max_duration_s: float | None = None,
        normalize: bool = False,
        long_clip: LongClipPolicy = "raise",
    ) -> None:
        super().__init__()
        if encoder_choice not in ENCODER_CHOICES:
            raise ValueError(f"encoder_choice must be one of {ENCODER_CHOICES}, got {encoder_choice!r}")
        self.torch_dtype = parse_dtype(dtype)
        target = parse_device(device)
        self.attn_implementation = check_attn_implementation(attn_implementation, target)
        self.policy = AudioPolicy(resample, multichannel, max_duration_s, normalize)
        self.long_clip = check_long_clip_policy(long_clip)
        self.source: EncoderSource = resolve(encoder_hf_model_tag, weights, revision)
        self.family = self.source.family
        self.features = self.source.features
        self._feature_dim = self.family.output_dim(self.source.encoder_config)
        start = time.perf_counter()
        self.encoder: nn.Module | None = build_encoder(
            self.source, weights, self.torch_dtype, self.attn_implementation, seed
        ).to(target)
        log.info(
            "built %s encoder (%s weights, %.0f M params, %s, %s) from %s in %.1f s",
            self.family.name,
            weights,
            sum(p.numel() for p in self.encoder.parameters()) / 1e6,
            self.torch_dtype,
            target,
            self.source.describe(),
            time.perf_counter() - start,
        )
        self._freeze_unread_parameters()

    # ----------------------------------------------------------------- metadata
    @property
    def sample_rate(self) -> int:
        return self.features.sampling_rate

    @property
    def n_mels(self) -> int:
        return self.features.n_mels

    @property
    def device(self) -> torch.device:
        return next(self._require_encoder().parameters()).device

    def feature_dim(self) -> int:
        """The encoder's output width (3584 for Qwen2.5-Omni-7B, 2048 for -3B)."""
        return self._feature_dim

    # --------------------------------------------------------------- CPU side
    def preprocess(self, data: tuple[Any, Any]) -> tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]:
        """``(wav [C, N] or [N], sr)`` -> ``(zeros [T, 1] int64, (T, mel [M, n_mels] float32), zeros [T, 1])``.

        M = ceil(N' / hop) for the N' samples at the model's rate; T = the
        encoder rows for M frames (0 for clips too short to give one row).
        """
        wav, sr = _unpack(data)
        mono = prepare_waveform(wav, sr, self.sample_rate, self.policy)
        return self._lm_positions(log_mel(mono, self.features))

    def preprocess_batch(
        self, batch: list[tuple[Any, Any]]
    ) -> list[tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]]:
        """``[preprocess(d) for d in batch]`` (equal outputs), with batched STFTs (``log_mel_batch``)."""
        monos = [prepare_waveform(*_unpack(data), self.sample_rate, self.policy) for data in batch]
        return [self._lm_positions(mel) for mel in log_mel_batch(monos, self.features)]

    def _lm_positions(self, mel: torch.Tensor) -> tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]:
        """``mel [M, n_mels]`` -> preprocess's ``(zeros [T, 1] int64, (T, mel), zeros [T, 1] float32)``."""
        mel_array = mel.numpy().copy()  # own the memory: no view of a larger buffer
        rows = int(self._rows(mel_array.shape[0]))
        return np.zeros((rows, 1), dtype=np.int64), (rows, mel_array), np.zeros((rows, 1), dtype=np.float32)

    def find_length(self, data: Any, before_length: int | torch.Tensor | None = None) -> int | torch.Tensor:
        """Encoder rows for a clip, by integer arithmetic only (no STFT, no resampling).

        ``data`` is ``(wav, sr)``, a sample count at the model's rate (int), or a
        LongTensor of sample counts. ``before_length``, when given, is that sample
        count and ``data`` is ignored. Int in -> int out; tensor in -> tensor out.
        """
        samples = before_length if before_length is not None else data
        if isinstance(samples, tuple):
            samples = self._samples_at_model_rate(*_unpack(samples))
        if isinstance(samples, torch.Tensor):
            if samples.dtype.is_floating_point or samples.dtype.is_complex or samples.dtype == torch.bool:
                raise TypeError(f"sample counts must be an integer tensor, got {samples.dtype}")
            if (samples < 0).any():
                raise ValueError("sample counts must be >= 0")
            return self._rows(mel_frames(samples.long(), self.features.hop_length))
        if isinstance(samples, (bool, np.bool_)) or not isinstance(samples, (int, np.integer)):
            raise TypeError(
                f"find_length takes (wav, sr), an int sample count or a LongTensor, got {type(samples).__name__}"
            )
        if samples < 0:
            raise ValueError(f"sample count must be >= 0, got {samples}")
        return int(self._rows(mel_frames(int(samples), self.features.hop_length)))

    def _rows(self, mel_len: int | torch.Tensor) -> int | torch.Tensor:
        """The family's length rule, after the ``long_clip`` policy (raises for a too-long clip under "raise")."""
        check_clip_frames(self.family, mel_len, self.long_clip, self.sample_rate / self.features.hop_length)
        return self.family.rows(mel_len)

    def _samples_at_model_rate(self, wav: Any, sr: Any) -> int:
        # the checks preprocess makes before reading a sample, so both refuse the same clips
        sr, _, num_samples = check_layout(wav, sr, self.sample_rate, self.policy)
        samples = resampled_length(num_samples, sr, self.sample_rate)
        check_not_empty_after_resampling(samples, num_samples, sr, self.sample_rate)
        return samples

    # --------------------------------------------------------------- GPU side
    def encode_batch(self, mel: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Padded mel batch ``[B, M_max, n_mels]`` + valid frames ``[B]`` -> list of ``[T_i, D]``.

        Runs under the caller's grad mode (wrap in ``torch.inference_mode()`` for
        inference). Clips too short for one row give an empty ``[0, D]`` tensor.
        """
        encoder = self._require_encoder()
        mel, lengths = self._check_batch(mel, lengths)
        rows = self._rows(lengths)
        dim = self.feature_dim()
        device = self.device
        outputs = [torch.empty(0, dim, dtype=self.torch_dtype, device=device) for _ in range(len(lengths))]
        keep = (rows > 0).nonzero().flatten()
        if len(keep) == 0:
            return outputs
        kept_lengths = lengths[keep]
        batch = mel[keep, : int(kept_lengths.max())].to(device=device, dtype=self.torch_dtype, non_blocking=True)
        flat = self.family.forward(encoder, batch, kept_lengths)
        kept_rows = rows[keep].tolist()
        if flat.shape[0] != sum(kept_rows):
            raise RuntimeError(
                f"{self.family.name}: encoder returned {flat.shape[0]} rows, length rule says {sum(kept_rows)}"
            )
        for index, feats in zip(keep.tolist(), flat.split(kept_rows), strict=True):
            outputs[index] = feats
        return outputs

    def _check_batch(self, mel: Any, lengths: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(mel, np.ndarray):
            if mel.dtype.kind != "f":
                raise TypeError(f"mel must be a floating-point array, got numpy {mel.dtype}")
            mel = torch.from_numpy(np.ascontiguousarray(mel))  # from_numpy refuses negative strides
        if not isinstance(mel, torch.Tensor):
            raise TypeError(f"mel must be a tensor [B, M_max, n_mels], got {type(mel).__name__}")
        if mel.ndim != 3 or mel.shape[2] != self.n_mels:
            raise ValueError(f"mel must have shape [B, M_max, {self.n_mels}], got {tuple(mel.shape)}")
        if not mel.dtype.is_floating_point:
            raise TypeError(f"mel must be a floating-point tensor, got {mel.dtype}")
        if isinstance(lengths, (list, tuple, np.ndarray)):
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu":
                raise TypeError(f"lengths must be integers, got an array of dtype {lengths.dtype}")
            lengths = torch.as_tensor(lengths)
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a LongTensor [B], got {type(lengths).__name__}")
        for name, tensor in (("mel", mel), ("lengths", lengths)):
            if tensor.is_meta:
                raise ValueError(f"{name} is on the meta device (a shape without data); pass a tensor that holds data")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        batch, max_frames = mel.shape[:2]
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [{batch}] (one per clip), got {tuple(lengths.shape)}")
        lengths = lengths.detach().to("cpu", torch.long)
        if batch and (lengths.min() < 1 or lengths.max() > max_frames):
            raise ValueError(f"lengths must lie in 1..M_max={max_frames}, got {lengths.tolist()}")
        return mel, lengths

    def dummy_forward(self, ref_tensor: torch.Tensor) -> torch.Tensor:
        """A zero scalar (``ref_tensor``'s dtype/device) wired to every encoder weight.

        Add it to the loss on a batch without audio so DDP/ZeRO see a gradient
        (zero) for every encoder parameter. Costs one forward of a few frames.
        """
        encoder = self._require_encoder()
        out = self._forward_silence(encoder)
        touch_all = sum(p.flatten()[0] for p in encoder.parameters() if p.requires_grad)
        return ((out.sum() + touch_all) * 0.0).to(device=ref_tensor.device, dtype=ref_tensor.dtype)

    def _forward_silence(self, encoder: nn.Module) -> torch.Tensor:
        """The family's forward on one all-zero clip of ``DUMMY_FRAMES`` frames: ``[rows, D]``."""
        mel = torch.zeros(1, DUMMY_FRAMES, self.n_mels, dtype=self.torch_dtype, device=self.device)
        return self.family.forward(encoder, mel, torch.tensor([DUMMY_FRAMES]))

    def _freeze_unread_parameters(self) -> None:
        """Freeze encoder weights that its forward never reads (Qwen2.5-Omni: ``audio_bos_eos_token``).

        They can never get a gradient, so DDP without ``find_unused_parameters``
        would fail on every rank that encodes audio ("did not receive grad").
        Found from the autograd graph of one ``DUMMY_FRAMES`` forward; they stay
        in ``state_dict``. Call ``requires_grad_(True)`` on one to train it yourself.
        """
        encoder = self._require_encoder()
        with torch.inference_mode(False), torch.enable_grad():
            reached = graph_leaves(self._forward_silence(encoder))
        if not reached:  # a forward without a graph (e.g. under no_grad inside) tells nothing
            return
        unread = [name for name, p in encoder.named_parameters() if p.requires_grad and id(p) not in reached]
        for name in unread:
            encoder.get_parameter(name).requires_grad_(False)
        if unread:
            log.info("froze %d encoder weight(s) its forward never reads: %s", len(unread), ", ".join(unread))

    def copy_for_worker(self) -> ContinuousAudioIO:
        """A copy without the encoder (no weights, no reload): preprocess/find_length only."""
        clone = copy.copy(self)
        clone.__dict__["_modules"] = {name: None for name in self._modules}
        clone.__dict__["_parameters"] = {}
        clone.__dict__["_buffers"] = {}
        return clone

    def _require_encoder(self) -> nn.Module:
        if self.encoder is None:
            raise RuntimeError(
                "this ContinuousAudioIO is a copy_for_worker() copy without encoder weights; "
                "call encode_batch/dummy_forward on the original object"
            )
        return self.encoder

    def extra_repr(self) -> str:
        return f"family={self.family.name}, tag={self.source.tag!r}, dtype={self.torch_dtype}"


def graph_leaves(output: torch.Tensor) -> set[int]:
    """``id`` of every leaf tensor (parameter) that ``output``'s autograd graph reaches."""
    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if (variable := getattr(node, "variable", None)) is not None:  # an AccumulateGrad node
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def _unpack(data: Any) -> tuple[Any, Any]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"expected a (wav, sample_rate) pair, got {type(data).__name__}")
    return data[0], data[1]
