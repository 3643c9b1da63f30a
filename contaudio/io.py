"""``ContinuousAudioIO``: audio -> LM positions (CPU) and mel batch -> encoder features (GPU)."""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedConfig

from contaudio.audio import (
    AudioPolicy,
    ChannelPolicy,
    ResamplePolicy,
    check_layout,
    check_not_empty_after_resampling,
    espnet_mono,
    espnet_samples,
    log_once,
    prepare_waveform,
)
from contaudio.dtypes import DtypeChoice, emulation_warning, resolve_dtype
from contaudio.encoders import EncoderFamily, EncoderSource, build_encoder, resolve
from contaudio.encoders.graphs import CudaGraphStacks
from contaudio.encoders.loading import WeightsMode
from contaudio.encoders.packed import (
    FLASH_IMPLEMENTATION,
    HALF_DTYPES,
    KERNEL_ATTRIBUTE,
    VARLEN_IMPLEMENTATION,
    flash_attn_error,
    stack_runner,
    varlen_attn_available,
)
from contaudio.encoders.registry import packed_stack_families
from contaudio.encoders.windows import LongClipPolicy, check_clip_frames, check_long_clip_policy
from contaudio.features import FeatureConfig, Featurizer
from contaudio.features.espnet import EspnetWhisperFeatures
from contaudio.lengths import resampled_length

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = (None, "sdpa", "eager", "flash_attention_2", "varlen")
ENCODER_CHOICES = ("huggingface",)
MODALITY = "audio"  # ESPnet's SpeechLM writes <|audio|> before the clip's positions
DUMMY_FRAMES = 4  # mel frames for dummy_forward, or the fewest that give one row where 4 give none (dummy_frames)
DUMMY_SEARCH_FRAMES = 3000  # dummy_frames looks no further than one 30 s window
ESPNET_TOWER_PATH = "model.audio_tower"  # where ESPnet's own ContinuousAudioIO keeps the tower (in its thinker)
CONTAUDIO_TOWER_PATH = "encoder"
TOWER_PATHS = (CONTAUDIO_TOWER_PATH, ESPNET_TOWER_PATH)  # checkpoint layouts either class loads
Frontend = Literal["processor", "espnet"]
FRONTENDS: tuple[str, ...] = ("processor", "espnet")


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


def check_attn_implementation(
    attn_implementation: str | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> str | None:
    """Validate the attention kernel name, and that it can run on ``device`` in ``dtype``, once, up front.

    ``"flash_attention_2"`` (flash-attn's varlen kernel) and ``"varlen"`` (torch's own,
    ``torch.nn.attention.varlen``) need CUDA and float16/bfloat16; flash-attn must import (an
    installed but broken build is refused here, not in layer 0).
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if attn_implementation not in (FLASH_IMPLEMENTATION, VARLEN_IMPLEMENTATION):
        return attn_implementation
    name = repr(attn_implementation)
    if device.type != "cuda":
        raise ValueError(f"attn_implementation={name} needs a CUDA device; use 'sdpa' on {device.type}")
    if dtype not in HALF_DTYPES:
        raise ValueError(
            f"attn_implementation={name} runs in float16/bfloat16 only, got {dtype}: "
            "pass dtype='bf16' (or 'fp16'), or attn_implementation='sdpa'"
        )
    if attn_implementation == FLASH_IMPLEMENTATION and (error := flash_attn_error()) is not None:
        raise ValueError(
            f"attn_implementation={name} needs a working flash-attn (pip install flash-attn), "
            f"but importing it failed ({error}); use 'varlen' or 'sdpa' instead"
        )
    if attn_implementation == VARLEN_IMPLEMENTATION and not varlen_attn_available():
        raise ValueError(
            f"attn_implementation={name} needs torch.nn.attention.varlen (torch {torch.__version__} has none "
            "usable here); use 'sdpa' or a newer torch"
        )
    return attn_implementation


class AbsIO(ABC, nn.Module):
    """What a speech LM needs from a modality I/O (the interface of ESPnet's SpeechLM ``AbsIO``).

    ``modality`` names the modality ("audio") and ``is_discrete`` says whether
    ``preprocess`` gives token ids (True) or continuous features (False).
    """

    def __init__(self, modality: str, is_discrete: bool) -> None:
        if "_modules" not in self.__dict__:  # a co-base (ESPnet's own AbsIO) may have set the Module up already
            nn.Module.__init__(self)
        self.modality = modality
        self.is_discrete = is_discrete

    @abstractmethod
    def preprocess(self, data: Any) -> tuple[np.ndarray, Any, np.ndarray]:
        """Sample -> ``(token seq [T, 1], continuous features, loss mask [T, 1])``."""

    @abstractmethod
    def find_length(self, data: Any, before_length: Any = None) -> Any:
        """LM positions ``T`` that ``preprocess`` would reserve, without doing the work."""

    @abstractmethod
    def feature_dim(self) -> int | None:
        """Width of each feature row (None for a discrete modality)."""

    @abstractmethod
    def copy_for_worker(self) -> AbsIO:
        """A light, picklable copy for data-loader workers (no weights)."""


class ContinuousAudioIO(AbsIO):
    """Continuous audio features from a pretrained audio encoder (a drop-in for ESPnet's class of this name).

    Args:
        encoder_choice: only ``"huggingface"`` (transformers modules).
        encoder_hf_model_tag: hub id, local checkpoint directory, or shipped card name
            (e.g. ``"contaudio/tiny-qwen2.5-omni"``).
        attn_implementation: None (transformers' default), "sdpa", "eager", "flash_attention_2" (the
            flash-attn package) or "varlen" (torch's own varlen flash kernel); the last two need CUDA
            and fp16/bf16, checked at construction. None on CUDA in fp16/bf16 picks "varlen" where
            torch has it (measured faster), the padded SDPA grid otherwise.
        dtype: "bfloat16"/"bf16", "float16"/"fp16", "float32"/"fp32", or "auto" (bf16 where the
            device runs it natively, float32 otherwise). On a CPU without native bf16/fp16 GEMMs
            the low-precision dtypes are ~150x slower than float32 (a warning says so).
        device: "cpu", "cuda" or "cuda:N".
        weights: "pretrained" (load real weights), "random" (seeded random init with non-zero
            biases and non-identity norms, no download) or "random_hf_init" (transformers' own init).
        revision: hub revision to load.
        seed: seed of the random init.
        resample: "resample" (soxr, logged once) or "raise" on sample-rate mismatch.
        multichannel: "average" (logged once) or "raise" for C > 1.
        max_duration_s: clips longer than this raise (None: no limit).
        normalize: zero-mean/unit-variance the waveform (off, as in Qwen's processor).
        long_clip: fixed-window encoders (Whisper, Qwen2-Audio: 30 s) on a longer clip:
            "raise" (default) or "windows" (encode consecutive 30 s windows, concatenate rows).
        skip_init_encoder: build no encoder at all: ``preprocess``, ``find_length`` and
            ``feature_dim`` work; ``encode_batch`` raises.
        frontend: how a clip becomes mel frames. ``"processor"`` (default): as the model's own HF
            processor does (Qwen: zero-padded to 300 s, not normalised, ``ceil(N / 160)`` frames,
            soxr resampling, channels averaged). ``"espnet"``: exactly as ESPnet 202611's own
            ``ContinuousAudioIO`` does (channel 0, torchaudio resampling, normalised unpadded
            extraction, ``N // 160`` frames, int32 ``seq``/``loss_mask``), for models trained
            through ESPnet's class. Whisper-extractor families only.
        returns: what a clip's rows are, the same meaning for every family (None: ``"lm"``, or ``"tower"`` for
            Whisper, which has no LM). ``"lm"``: exactly what the
            model feeds its LM at the audio placeholders (HF's ``get_audio_features(...).pooler_output`` for the
            clip alone: the tower, then the model's own projector/merge where it has one); ``find_length`` is then
            the number of audio placeholder tokens the model's processor puts in the prompt, ``feature_dim()`` the
            LM width. Whisper has no LM: use ``"tower"``. ``"tower"``: the audio tower's own rows.
            ``"hidden_states"``: per clip ``[len(layers), T, D_tower]``, HF's ``output_hidden_states`` entries
            ``layers`` for the clip alone (only the layers up to the deepest one are built and run).
        layers: with ``returns="hidden_states"``: indices into HF's ``output_hidden_states`` (0: the first
            layer's input, ``i``: layer ``i``'s output, negative from the end), e.g. ``[-1]`` or ``[4, 8, 12]``.
        cuda_graphs: on CUDA, replay the layer stack from a CUDA graph per bucket of padded shapes when
            ``encode_batch`` runs without grad (small batches are launch-bound; :mod:`contaudio.encoders.graphs`).
            Families whose layers run through the packed windowed stack only (``graph_stack``); refused on CPU.
            Experimental: its GPU tests (``tests/encoders/test_graphs_gpu.py``) have not yet run on a GPU.
    """

    tower_path: ClassVar[str] = CONTAUDIO_TOWER_PATH  # the tower's place in this module (its state_dict prefix)
    keep_dropped_weights: ClassVar[bool] = False  # keep weights the forward never reads as buffers (for their keys)

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
        skip_init_encoder: bool = False,
        frontend: Frontend = "processor",
        returns: str | None = None,
        layers: Sequence[int] | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(modality=MODALITY, is_discrete=False)
        if encoder_choice not in ENCODER_CHOICES:
            raise ValueError(f"encoder_choice must be one of {ENCODER_CHOICES}, got {encoder_choice!r}")
        target = parse_device(device)
        self.dtype_choice: DtypeChoice = resolve_dtype(dtype, target)
        self.attn_implementation = check_attn_implementation(attn_implementation, target, self.dtype_choice.dtype)
        self.policy = AudioPolicy(resample, multichannel, max_duration_s, normalize)
        self.frontend = check_frontend(frontend, self.policy)
        self.long_clip = check_long_clip_policy(long_clip)
        # the length-stats step needs no weights: a shipped card gives family and features without any download
        self.source: EncoderSource = resolve(encoder_hf_model_tag, weights, revision, config_only=skip_init_encoder)
        self.family = self.source.family.view(returns, layers, self.source.encoder_config)
        self.returns: str = self.source.family.default_returns if returns is None else returns
        self.layers: tuple[int, ...] | None = getattr(self.family, "layers", None)  # resolved (hidden_states only)
        self.features = frontend_features(self.source.features, self.frontend, self.family.name)
        self._feature_dim = self.family.output_dim(
            self.family.module_config(self.source.encoder_config, self.source.model_config)
        )
        self.dropped_weights: tuple[str, ...] = ()
        self.graphs = check_cuda_graphs(cuda_graphs, self.family, target)
        if skip_init_encoder:
            log.info("skip_init_encoder=True: no %s encoder built; preprocess/find_length only", self.family.name)
            return
        if warning := emulation_warning(self.torch_dtype, target):
            log.warning(warning)
        log.info("compute dtype %s (%s)", self.dtype_choice.name, self.dtype_choice.reason)
        start = time.perf_counter()
        hf_attention = "sdpa" if self.attn_implementation == VARLEN_IMPLEMENTATION else self.attn_implementation
        encoder = build_encoder(self.source, weights, self.torch_dtype, hf_attention, seed, family=self.family)
        self._attach_encoder(encoder.to(target))
        if self.attn_implementation in (VARLEN_IMPLEMENTATION, "sdpa"):  # asked for by name: the packed forward
            for module in self.encoder.modules():  # every config inside (a tower wrapped with its projector too)
                if isinstance(config := getattr(module, "config", None), PreTrainedConfig):
                    setattr(config, KERNEL_ATTRIBUTE, self.attn_implementation)  # uses exactly that kernel
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
        values = {name: p.detach() for name, p in self.encoder.named_parameters()}
        self.dropped_weights = drop_unread_parameters(self.encoder, lambda: self._forward_silence(self.encoder))
        # their state_dict keys stay (checkpoints interchange), or HF's forward still runs them (the hidden-states
        # oracle runs HF's tower through a layer our forward stops before); no gradient, no DDP
        if self.keep_dropped_weights or self.family.leading_shape:
            for name in self.dropped_weights:
                owner, _, leaf = name.rpartition(".")
                module = self.encoder.get_submodule(owner)
                del module._parameters[leaf]  # unregistered (None) by drop_unread_parameters
                module.register_buffer(leaf, values[name])

    # ------------------------------------------------------------------- the tower
    @property
    def encoder(self) -> nn.Module | None:
        """The audio tower, at :attr:`tower_path` in this module (None without weights: a worker copy, ...)."""
        module: nn.Module | None = self
        for name in self.tower_path.split("."):
            module = module._modules.get(name) if module is not None else None
        return module

    def _attach_encoder(self, encoder: nn.Module) -> None:
        """Put the tower at :attr:`tower_path`, creating empty holder modules on the way (ESPnet's ``model``)."""
        *owners, leaf = self.tower_path.split(".")
        module: nn.Module = self
        for name in owners:
            if module._modules.get(name) is None:
                module._modules[name] = nn.Module()
            module = module._modules[name]
        module._modules[leaf] = encoder

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

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype ``encode_batch`` computes in: the encoder's weights' (it follows a cast of the whole module,
        ``.to(torch.bfloat16)`` or ``.half()``, as a trainer makes), or the one chosen at construction where there is
        no encoder (a worker copy)."""
        encoder = self.encoder
        return self.dtype_choice.dtype if encoder is None else next(encoder.parameters()).dtype

    def feature_dim(self) -> int:
        """The encoder's output width (3584 for Qwen2.5-Omni-7B, 2048 for -3B)."""
        return self._feature_dim

    def num_stream(self) -> None:
        """Parallel token streams: none, the modality is continuous (ESPnet's AbsIO)."""
        return None

    def get_vocabulary(self) -> None:
        """No vocabulary: the modality is continuous (ESPnet's AbsIO)."""
        return None

    def get_stream_interval(self) -> None:
        """No token ranges: the modality is continuous (ESPnet's AbsIO)."""
        return None

    def get_stream_weight(self) -> None:
        """No stream loss weights: the modality is continuous (ESPnet's AbsIO)."""
        return None

    def decode_batch(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ContinuousAudioIO encodes audio into features; it cannot decode features to audio")

    # --------------------------------------------------------------- CPU side
    def preprocess(self, data: tuple[Any, Any]) -> tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]:
        """``(wav [C, N] or [N], sr)`` -> ``(zeros [T, 1] int64, (T, mel [M, n_mels] float32), zeros [T, 1])``.

        M = ``features.frames(N')`` for the N' samples at the model's rate (``ceil(N' / 160)`` for
        Whisper's log-mel); T = the encoder rows for M frames (0 for clips too short to give one
        row). A ``[N, C]`` array with N > C is transposed (logged once), as ESPnet does.
        """
        return self._lm_positions(self.features.compute(self._mono(*_unpack(data))))

    def preprocess_batch(
        self, batch: list[tuple[Any, Any]]
    ) -> list[tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]]:
        """``[preprocess(d) for d in batch]`` with the featurizer's batched kernels (Whisper's: within 1e-6)."""
        monos = [self._mono(*_unpack(data)) for data in batch]
        return [self._lm_positions(mel) for mel in self.features.compute_batch(monos)]

    def _lm_positions(self, mel: torch.Tensor) -> tuple[np.ndarray, tuple[int, np.ndarray], np.ndarray]:
        """``mel [M, n_mels]`` -> preprocess's ``(zeros [T, 1], (T, mel), zeros [T, 1])``.

        ``seq`` int64 and ``loss_mask`` float32; both int32 with ``frontend="espnet"``, as ESPnet's class gives them.
        """
        mel_array = mel.numpy().copy()  # own the memory: no view of a larger buffer
        rows = int(self._rows(mel_array.shape[0]))
        seq_dtype, mask_dtype = (np.int32, np.int32) if self.frontend == "espnet" else (np.int64, np.float32)
        return np.zeros((rows, 1), dtype=seq_dtype), (rows, mel_array), np.zeros((rows, 1), dtype=mask_dtype)

    def find_length(self, data: Any, before_length: int | torch.Tensor | None = None) -> int | torch.Tensor:
        """LM positions ``T`` for a clip, by integer arithmetic only (no STFT, no resampling, no samples read).

        ``before_length``: the clip's **mel-frame** count ``M`` (ESPnet's "frame length before
        downsampling"); ``data`` is then not read and may be None. An int gives an int, an
        integer tensor a tensor of the same shape: ``find_length(None, before_length=100) == 25``
        on Qwen2.5-Omni.

        ``data`` (when ``before_length`` is None): ``(wav [C, N], sr)`` (only its shape and rate
        are read; resampled lengths are counted as ``preprocess`` makes them), or a sample count
        at the model's rate (int, or an integer tensor of counts).
        """
        if before_length is not None:
            return self._rows(check_counts(before_length, "before_length (mel frames)"))
        if data is None:
            raise TypeError("find_length needs data ((wav, sr) or a sample count) or before_length (mel frames)")
        if isinstance(data, (tuple, list)):
            samples = self._samples_at_model_rate(*_unpack(data))
        else:
            samples = check_counts(data, "sample count")
        self.features.check_samples(samples)  # a clip preprocess refuses is refused here too, with its message
        return self._rows(self.features.frames(samples))

    def _rows(self, mel_len: int | torch.Tensor) -> int | torch.Tensor:
        """The family's length rule, after the ``long_clip`` policy (raises for a too-long clip under "raise")."""
        check_clip_frames(self.family, mel_len, self.long_clip, self.features.frame_rate)
        rows = self.family.rows(mel_len)
        return rows if isinstance(rows, torch.Tensor) else int(rows)

    def _mono(self, wav: Any, sr: Any) -> np.ndarray:
        """The clip as the frontend hands it to the featurizer: mono float32 at the model's rate."""
        if self.frontend == "espnet":
            return espnet_mono(wav, sr, self.sample_rate, self.policy)
        return prepare_waveform(wav, sr, self.sample_rate, self.policy)

    def _samples_at_model_rate(self, wav: Any, sr: Any) -> int:
        # the checks preprocess makes before reading a sample, so both refuse the same clips
        sr, _, num_samples = check_layout(wav, sr, self.sample_rate, self.policy)
        if self.frontend == "espnet":  # ESPnet's own count: int(N * 16000 / sr), float maths
            return espnet_samples(num_samples, sr, self.sample_rate)
        samples = resampled_length(num_samples, sr, self.sample_rate)
        check_not_empty_after_resampling(samples, num_samples, sr, self.sample_rate)
        return samples

    # --------------------------------------------------------------- GPU side
    def encode_batch(self, mel: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Padded mel batch ``[B, M_max, n_mels]`` + valid frames ``[B]`` -> list of ``[T_i, D]``.

        ``T_i`` is exactly ``preprocess``'s T for clip i (ESPnet writes each tensor into T
        LM positions without slicing). Runs under the caller's grad mode (wrap in
        ``torch.inference_mode()`` for inference). Clips too short for one row give an
        empty ``[0, D]`` tensor. With ``returns="hidden_states"`` each clip is ``[len(layers), T_i, D]``.
        """
        encoder = self._require_encoder()
        mel, lengths = self._check_batch(mel, lengths)
        rows = self._rows(lengths)
        dim = self.feature_dim()
        device = self.device
        shape = (*self.family.leading_shape, 0, dim)
        outputs = [torch.empty(shape, dtype=self.torch_dtype, device=device) for _ in range(len(lengths))]
        keep = (rows > 0).nonzero().flatten()
        if len(keep) == 0:
            return outputs
        kept_lengths = lengths[keep]
        width = int(kept_lengths.max())
        kept = mel[:, :width] if len(keep) == len(lengths) else mel[:, :width].index_select(0, keep.to(mel.device))
        batch = kept.to(device=device, dtype=self.torch_dtype, non_blocking=True)
        with stack_runner(self.graphs):  # taken only without grad (run_windowed_stack checks)
            flat = self.family.forward(encoder, batch, kept_lengths)
        kept_rows = rows[keep].tolist()
        if flat.shape[-2] != sum(kept_rows):
            raise RuntimeError(
                f"{self.family.name}: encoder returned {flat.shape[-2]} rows, length rule says {sum(kept_rows)}"
            )
        for index, feats in zip(keep.tolist(), flat.split(kept_rows, dim=-2), strict=True):
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
        if batch and (lengths.min() < 0 or lengths.max() > max_frames):  # 0 frames: an empty [0, D] clip
            raise ValueError(f"lengths must lie in 0..M_max={max_frames}, got {lengths.tolist()}")
        return mel, lengths

    def dummy_forward(self, ref_tensor: torch.Tensor) -> torch.Tensor:
        """The raw encoder output ``[rows, D]`` of a tiny silent clip, wired to every trainable encoder weight.

        For a batch without audio: feed it where ``encode_batch``'s output would go (e.g. through
        the LM's adaptor ``Linear(D, hidden)``) and add ``0.0 * out.sum()`` to the loss, so
        DDP/ZeRO see a (zero) gradient for every encoder weight. Returned in
        ``ref_tensor``'s dtype and device. Costs one forward of :func:`dummy_frames` frames (4 for most families).
        """
        if not (isinstance(ref_tensor, torch.Tensor) and ref_tensor.is_floating_point()):
            kind = ref_tensor.dtype if isinstance(ref_tensor, torch.Tensor) else type(ref_tensor).__name__
            raise TypeError(f"ref_tensor must be a floating-point tensor (the LM's input embeddings), got {kind}")
        encoder = self._require_encoder()
        out = self._forward_silence(encoder)
        trainable = [p.reshape(-1)[:1].sum() for p in encoder.parameters() if p.requires_grad]
        if trainable:  # weights a future forward might not read still join the graph (with a zero gradient)
            out = out + 0.0 * torch.stack(trainable).sum().to(out.dtype)
        return out.to(device=ref_tensor.device, dtype=ref_tensor.dtype)

    def _forward_silence(self, encoder: nn.Module) -> torch.Tensor:
        """The family's forward on one all-zero clip of :func:`dummy_frames` frames: ``[rows, D]``."""
        frames = dummy_frames(self.family.rows)
        mel = torch.zeros(1, frames, self.n_mels, dtype=self.torch_dtype, device=self.device)
        return self.family.forward(encoder, mel, torch.tensor([frames]))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Also accept the other class's layout and the weights the forward never reads.

        contaudio keeps the tower at ``encoder.*``, ESPnet's own ``ContinuousAudioIO`` (and
        ``contaudio.integrations.espnet``) at ``model.audio_tower.*``, weights its forward never reads
        included (e.g. ``audio_bos_eos_token``). Keys of the other layout are renamed to this class's
        :attr:`tower_path`; the dropped weights are discarded (logged once), or, where this class keeps
        them as buffers, taken when present and left as they are when absent. Everything else stays strict.
        """
        tower = prefix + self.tower_path + "."
        for other in (prefix + path + "." for path in TOWER_PATHS if path != self.tower_path):
            for key in [k for k in state_dict if k.startswith(other)]:
                state_dict[tower + key[len(other) :]] = state_dict.pop(key)
        if self.keep_dropped_weights and self.encoder is not None:
            buffers = dict(self.encoder.named_buffers())
            for name in self.dropped_weights:
                state_dict.setdefault(tower + name, buffers[name])
        else:
            discarded = [name for name in self.dropped_weights if state_dict.pop(tower + name, None) is not None]
            if discarded:
                log_once(
                    f"discard-{prefix}",
                    f"ignoring checkpoint weights the encoder never reads: {', '.join(discarded)}",
                    logging.INFO,
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def copy_for_worker(self) -> ContinuousAudioIO:
        """A copy without the encoder (no weights, no reload): preprocess/find_length only."""
        clone = copy.copy(self)
        clone.__dict__["_modules"] = {name: None for name in self._modules}
        clone.__dict__["_parameters"] = {}
        clone.__dict__["_buffers"] = {}
        clone.__dict__["graphs"] = None  # graphs hold device buffers; a worker never encodes
        return clone

    def _require_encoder(self) -> nn.Module:
        if self.encoder is None:
            raise RuntimeError(
                "this ContinuousAudioIO has no encoder (a copy_for_worker() copy, or built with "
                "skip_init_encoder=True): call encode_batch/dummy_forward on an object built with its encoder"
            )
        return self.encoder

    def extra_repr(self) -> str:
        return f"family={self.family.name}, returns={self.returns!r}, tag={self.source.tag!r}, dtype={self.torch_dtype}"


def dummy_frames(rows: Callable[[int], Any]) -> int:
    """Mel frames of ``dummy_forward``'s clip: :data:`DUMMY_FRAMES`, or the fewest that give one row under ``rows``.

    >>> dummy_frames(lambda m: m // 2), dummy_frames(lambda m: (((m - 1) // 2 + 1) - 4) // 4 + 1)
    (4, 7)
    """
    for frames in range(DUMMY_FRAMES, DUMMY_SEARCH_FRAMES + 1):
        if int(rows(frames)) > 0:
            return frames
    raise ValueError(f"no clip of {DUMMY_FRAMES}..{DUMMY_SEARCH_FRAMES} mel frames gives a row: cannot build a dummy")


def check_cuda_graphs(cuda_graphs: bool, family: EncoderFamily, device: torch.device) -> CudaGraphStacks | None:
    """The graph runner ``cuda_graphs=True`` asks for, or None; refused where it cannot work."""
    if not cuda_graphs:
        return None
    if device.type != "cuda":
        raise ValueError(
            f"cuda_graphs=True needs a CUDA device, got device={str(device)!r}: on a CPU there are no kernel "
            "launches to save; drop the option"
        )
    if not family.graph_stack:
        raise ValueError(
            f"cuda_graphs=True: the {family.name} forward does not run its layers through contaudio's packed "
            f"windowed stack, which is what a graph replays (families that do: {', '.join(packed_stack_families())}); "
            "drop the option"
        )
    return CudaGraphStacks()


def check_frontend(frontend: str, policy: AudioPolicy) -> str:
    """A known frontend; ``"espnet"`` does what ESPnet does, so it refuses the processor frontend's audio policies."""
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")
    if frontend == "espnet" and replace(policy, max_duration_s=None) != AudioPolicy():  # only the duration limit
        raise ValueError(
            "frontend='espnet' prepares audio exactly as ESPnet's ContinuousAudioIO (channel 0, torchaudio "
            "resampling, normalised); resample/multichannel/normalize are the 'processor' frontend's options: "
            "drop them, or use frontend='processor'"
        )
    return frontend


def frontend_features(features: Featurizer, frontend: str, family: str) -> Featurizer:
    """The checkpoint's featurizer as ``frontend`` calls it (``"espnet"``: Whisper's extractor unpadded, normalised)."""
    if frontend == "processor":
        return features
    if type(features) is not FeatureConfig or features.waveform_window_s:
        raise ValueError(
            f"frontend='espnet' reproduces ESPnet's ContinuousAudioIO, which runs a Whisper feature extractor on the "
            f"whole clip; {family} uses {type(features).__name__}: use frontend='processor'"
        )
    return EspnetWhisperFeatures.of(features)


def check_counts(value: Any, what: str) -> int | torch.Tensor:
    """A non-negative integer or integer tensor (a frame or sample count); a clear error otherwise."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{what} must be an integer tensor, got {value.dtype}")
        if value.is_meta:
            raise ValueError(f"{what} is on the meta device (a shape without data)")
        value = value.detach().to("cpu", torch.long)
        if bool((value < 0).any()):
            raise ValueError(f"{what} must be >= 0, got {value.tolist()}")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{what} must be an int or an integer tensor, got {type(value).__name__}; "
            "find_length takes (wav, sr), a sample count, or before_length=<mel frames>"
        )
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return int(value)


def unread_parameters(encoder: nn.Module, forward: Any) -> list[str]:
    """Names of the encoder parameters that ``forward()``'s autograd graph never reaches (all made trainable)."""
    flags = {name: p.requires_grad for name, p in encoder.named_parameters()}
    try:
        encoder.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            reached = graph_leaves(forward())
    finally:
        for name, p in encoder.named_parameters():
            p.requires_grad_(flags[name])
    if not reached:  # a forward without a graph (e.g. under no_grad inside) tells nothing
        log.warning("the encoder's forward built no autograd graph; keeping every weight")
        return []
    return [name for name, p in encoder.named_parameters() if id(p) not in reached]


def drop_unread_parameters(encoder: nn.Module, forward: Any) -> tuple[str, ...]:
    """Remove the parameters ``forward()`` never reads (Qwen2.5-Omni: ``audio_bos_eos_token``).

    They could never get a gradient, so DDP without ``find_unused_parameters`` would fail on
    every rank once training code makes all parameters trainable ("did not receive grad").
    Each one is unregistered (``None``) in its module, so it leaves ``parameters()`` and
    ``state_dict()``. Call after loading: checkpoint loading stays strict. Returns the names.
    """
    unread = unread_parameters(encoder, forward)
    for name in unread:
        owner, _, leaf = name.rpartition(".")
        encoder.get_submodule(owner).register_parameter(leaf, None)
    if unread:
        log.info("dropped %d encoder weight(s) its forward never reads: %s", len(unread), ", ".join(unread))
    return tuple(unread)


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
    """``(wav, sr)`` -> wav, sr; refuses another shape of input, naming the likely mix-up."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"expected a (wav, sample_rate) pair, got {type(data).__name__}")
    first, second = data
    if isinstance(second, (np.ndarray, torch.Tensor)) and second.ndim:
        if isinstance(first, (int, float, np.number)):
            raise TypeError("got (sample_rate, wav), as scipy.io.wavfile.read returns it: pass (wav, sample_rate)")
    elif isinstance(first, (int, np.integer)):
        raise TypeError(
            f"got {type(data).__name__} {list(data)!r}, not a (wav, sample_rate) pair: for several sample counts pass "
            "an integer tensor (find_length(torch.tensor(counts)))"
        )
    return first, second
