"""Packed window attention and chunking: the generic machinery of the chunked (Qwen-Omni) towers.

The families' forwards (``qwen2_5_omni.py``, ``qwen3_omni.py``) call into this module with
their own chunking and windows; nothing here knows a family's length rule.

The Qwen audio towers attend within fixed windows only (Qwen2.5-Omni: each
2 s chunk of 100 rows). Without flash attention, transformers runs one
attention call per window per layer in a Python loop (~15,000 calls for 32 x
30 s on a 32-layer tower). Here every window of the batch goes through ONE
call per layer:

- the hidden states live as packed rows ``[N, d]`` (valid rows only, clip by
  clip, window by window), so the linear layers never compute on padding;
- for attention, q/k/v are laid out as a padded ``[num_windows, window_len, ...]``
  grid and run through one ``scaled_dot_product_attention`` with a boolean key
  mask ``[num_windows, 1, 1, window_len]`` (no mask at all when every window is
  full), or one varlen flash-attention call on the packed rows when the encoder
  was built with ``attn_implementation="flash_attention_2"``; ``"eager"`` runs
  the same grid through an explicit float32 softmax, as HF's eager path does.

On CUDA the forward makes no host sync inside the layer loop: each batch's layout is built once
on the CPU, its index tensors go to the device by pinned non-blocking copies, and every size is
read from CPU-side counts (``tests/encoders/test_packed_gpu.py`` runs the loop under
``torch.cuda.set_sync_debug_mode("error")``).

Padded query rows see at least one real key (every window holds >= 1 row), so
they stay finite; they are dropped before anything reads them. Nothing here
uses ``torch.no_grad``: the forward runs under the caller's grad mode.

The layer stack (:func:`run_layers`) only needs each window's row count, so
any tower whose layers look like ``Qwen2_5OmniAudioEncoderLayer`` (Whisper-style
pre-norm block; Qwen3-Omni's too) can reuse it with its own windows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from contaudio.lengths import ceil_div

AttentionKernel = Literal["sdpa", "sdpa_buckets", "eager", "flash", "varlen"]
# (q, k, v) packed rows [N, heads, head_dim] -> attention output [N, heads, head_dim]
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

FP16_CLAMP_MARGIN = 1000.0  # HF's layers clamp fp16 activations to finfo.max - 1000
FLASH_IMPLEMENTATION = "flash_attention_2"
EAGER_IMPLEMENTATION = "eager"
VARLEN_IMPLEMENTATION = "varlen"  # contaudio's own choice: torch's varlen flash kernel (HF's modules run as sdpa)
GRID_IMPLEMENTATION = "sdpa"  # asked for explicitly: one masked SDPA call over the padded window grid
KERNEL_ATTRIBUTE = "contaudio_attention"  # set on an encoder's config to pick a kernel HF has no name for
FLASH_DETERMINISTIC = "FLASH_ATTENTION_DETERMINISTIC"  # as HF: "1" makes flash-attn's backward deterministic
HALF_DTYPES = (torch.float16, torch.bfloat16)  # the flash kernels' dtypes


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU index tensor on ``device``: a pinned, non-blocking copy on CUDA (no host sync), as is elsewhere."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass(frozen=True)
class WindowLayout:
    """Where the N packed rows sit in a padded ``[num_windows, window_len]`` attention grid.

    window_rows: ``(num_windows,)`` int64 on CPU, rows per window (each >= 1).
    window_len: the longest window, the grid's second dimension.
    num_rows: N, the packed rows (a CPU-side count: reading it never syncs).
    row_index: ``(N,)`` int64 on the device, flat grid index of each packed row;
        ``None`` when every window is full (the grid *is* the packed rows).
    key_mask: ``(num_windows, 1, 1, window_len)`` bool on the device, True for a
        real key; ``None`` when every window is full.
    cu_seqlens: ``(num_windows + 1,)`` int32 on the device, window boundaries in
        the packed rows (flash-attention's varlen layout).
    buckets: ``(first row, windows, rows per window)`` of each maximal run of
        consecutive windows of equal length (one run when all are full).
    """

    window_rows: torch.Tensor
    window_len: int
    num_rows: int
    row_index: torch.Tensor | None
    key_mask: torch.Tensor | None
    cu_seqlens: torch.Tensor
    buckets: tuple[tuple[int, int, int], ...]

    @classmethod
    def from_window_rows(cls, window_rows: torch.Tensor, device: torch.device | str) -> WindowLayout:
        """Build the layout from rows per window ``(num_windows,)`` (CPU; every entry >= 1).

        >>> layout = WindowLayout.from_window_rows(torch.tensor([3, 1]), "cpu")
        >>> layout.window_len, layout.row_index.tolist(), layout.cu_seqlens.tolist()
        (3, [0, 1, 2, 3], [0, 3, 4])
        """
        window_rows = window_rows.detach().to("cpu", torch.long)
        if window_rows.ndim != 1 or len(window_rows) == 0 or int(window_rows.min()) < 1:
            raise ValueError(f"window_rows must be a non-empty 1-D tensor of counts >= 1, got {window_rows.tolist()}")
        device = torch.device(device)
        window_len, num_rows = int(window_rows.max()), int(window_rows.sum())
        cu_seqlens = to_device(F.pad(window_rows.cumsum(0), (1, 0)).to(torch.int32), device)
        buckets = equal_length_runs(window_rows)
        if bool((window_rows == window_len).all()):
            return cls(window_rows, window_len, num_rows, None, None, cu_seqlens, buckets)
        valid = window_grid(window_rows, window_len)
        row_index = to_device(valid.flatten().nonzero().flatten(), device)
        key_mask = to_device(valid[:, None, None, :], device)
        return cls(window_rows, window_len, num_rows, row_index, key_mask, cu_seqlens, buckets)

    @property
    def num_windows(self) -> int:
        return len(self.window_rows)

    def to_grid(self, rows: torch.Tensor) -> torch.Tensor:
        """Packed ``[N, *rest]`` -> padded ``[num_windows, window_len, *rest]`` (zeros in padding)."""
        shape = (self.num_windows, self.window_len, *rows.shape[1:])
        if self.row_index is None:
            return rows.reshape(shape)
        grid = rows.new_zeros((self.num_windows * self.window_len, *rows.shape[1:]))
        return grid.index_copy_(0, self.row_index, rows).reshape(shape)

    def qkv_grid(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Packed q/k/v ``[N, heads, head_dim]`` -> three ``[num_windows, heads, window_len, head_dim]`` views of
        ONE padded grid (one stack, one zero fill and one in-place index copy for the three)."""
        qkv = torch.stack((q, k, v))  # [3, N, heads, head_dim]
        if self.row_index is not None:
            grid = qkv.new_zeros((3, self.num_windows * self.window_len, *qkv.shape[2:]))
            qkv = grid.index_copy_(1, self.row_index, qkv)
        grid = qkv.reshape(3, self.num_windows, self.window_len, *qkv.shape[2:]).transpose(2, 3)
        return grid.unbind(0)

    def to_rows(self, grid: torch.Tensor) -> torch.Tensor:
        """Padded ``[num_windows, window_len, *rest]`` -> packed ``[N, *rest]`` (padding dropped)."""
        flat = grid.reshape(self.num_windows * self.window_len, *grid.shape[2:])
        return flat if self.row_index is None else flat.index_select(0, self.row_index)


def window_grid(window_rows: torch.Tensor, window_len: int) -> torch.Tensor:
    """``[num_windows, window_len]`` bool: True where a window of ``window_rows (num_windows,)`` rows holds a row
    (its first ``window_rows[i]`` places).

    >>> window_grid(torch.tensor([2, 1]), 3).tolist()
    [[True, True, False], [True, False, False]]
    """
    return torch.arange(window_len) < window_rows[:, None]


def equal_length_runs(window_rows: torch.Tensor) -> tuple[tuple[int, int, int], ...]:
    """``(first row, windows, rows per window)`` of each run of consecutive equal-length windows.

    >>> equal_length_runs(torch.tensor([100, 100, 50, 50, 100]))
    ((0, 2, 100), (200, 2, 50), (300, 1, 100))
    """
    lengths, counts = torch.unique_consecutive(window_rows, return_counts=True)
    starts = F.pad((lengths * counts).cumsum(0)[:-1], (1, 0))
    return tuple(zip(starts.tolist(), counts.tolist(), lengths.tolist(), strict=True))


def sort_windows(window_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder windows longest first (stable), so equal lengths sit together.

    window_rows: ``(num_windows,)`` CPU. Returns the sorted ``(num_windows,)`` and
    ``(N,)`` packed-row indices: ``rows[index]`` puts the rows in that window order.

    >>> sorted_rows, index = sort_windows(torch.tensor([2, 1, 2]))
    >>> sorted_rows.tolist(), index.tolist()
    ([2, 2, 1], [0, 1, 3, 4, 2])
    """
    order = torch.sort(window_rows, descending=True, stable=True).indices
    sorted_rows = window_rows[order]
    starts = F.pad(window_rows.cumsum(0)[:-1], (1, 0))[order]  # first packed row of each window, in new order
    first_new = F.pad(sorted_rows.cumsum(0)[:-1], (1, 0))
    offset = torch.arange(int(sorted_rows.sum())) - torch.repeat_interleave(first_new, sorted_rows)
    return sorted_rows, torch.repeat_interleave(starts, sorted_rows) + offset


def attention_kernel(config: object, device: torch.device, dtype: torch.dtype | None = None) -> AttentionKernel:
    """Which kernel runs the windows here, for an encoder's config, device and compute dtype.

    - ``config._attn_implementation == "eager"`` -> explicit float32 softmax (HF's eager), anywhere;
    - on CPU -> one unmasked SDPA call per window length (no padding, no mask: measured faster there);
    - on CUDA, a kernel named in ``config.contaudio_attention`` (``"varlen"``: torch's varlen flash
      kernel; ``"sdpa"``: one masked SDPA call over the padded grid) wins; else ``"flash_attention_2"``
      -> flash-attn's varlen kernel; else, in fp16/bf16 where torch has it, torch's varlen kernel
      (measured 1.0-1.4x the grid on an H200 for 32-clip batches of both Qwen towers); else the grid.

    HF's non-flash path calls SDPA per window, so every choice computes the same attention.
    """
    if getattr(config, "_attn_implementation", None) == EAGER_IMPLEMENTATION:
        return "eager"
    if device.type != "cuda":
        return "sdpa_buckets"
    chosen = getattr(config, KERNEL_ATTRIBUTE, None)
    if chosen in (VARLEN_IMPLEMENTATION, GRID_IMPLEMENTATION):
        return chosen
    if getattr(config, "_attn_implementation", None) == FLASH_IMPLEMENTATION and flash_attn_available():
        return "flash"
    if dtype in HALF_DTYPES and varlen_attn_available():
        return "varlen"
    return "sdpa"


def flash_attn_error() -> str | None:
    """Why flash-attn's varlen kernel cannot run here (not installed, or installed but broken); None if it can."""
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception as err:  # a broken build raises ImportError, OSError (missing .so symbols), ...
        return f"{type(err).__name__}: {err}"
    return None


def flash_attn_available() -> bool:
    return flash_attn_error() is None


def varlen_attn_available() -> bool:
    """Whether this torch ships ``torch.nn.attention.varlen.varlen_attn`` and a CUDA device exists."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def grid_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: WindowLayout, scaling: float) -> torch.Tensor:
    """One SDPA call over every window: packed ``[N, heads, head_dim]`` q/k/v -> ``[N, heads, head_dim]``."""
    q, k, v = layout.qkv_grid(q, k, v)  # [windows, heads, window_len, head_dim]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask, scale=scaling)
    return layout.to_rows(out.transpose(1, 2))


def bucketed_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: WindowLayout, scaling: float
) -> torch.Tensor:
    """One unmasked SDPA call per run of equal-length windows, on views of the packed rows; shapes as
    :func:`grid_sdpa`. Best when windows are sorted by length (:func:`run_windowed_stack` does that)."""
    outputs = []
    for start, count, length in layout.buckets:
        stop = start + count * length
        grid = (t[start:stop].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(*grid, scale=scaling)  # [count, heads, length, head_dim]
        outputs.append(out.transpose(1, 2).flatten(0, 1))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def grid_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: WindowLayout, scaling: float) -> torch.Tensor:
    """HF's eager attention (float32 softmax, cast back) over every window at once; shapes as :func:`grid_sdpa`."""
    q, k, v = layout.qkv_grid(q, k, v)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # [windows, heads, window_len, window_len]
    if layout.key_mask is not None:
        scores = scores.masked_fill(~layout.key_mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return layout.to_rows(torch.matmul(weights, v).transpose(1, 2))


def varlen_flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: WindowLayout, scaling: float
) -> torch.Tensor:
    """flash-attn's varlen kernel on the packed rows (no padding at all); shapes as :func:`grid_sdpa`."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=layout.cu_seqlens,
        cu_seqlens_k=layout.cu_seqlens,
        max_seqlen_q=layout.window_len,
        max_seqlen_k=layout.window_len,
        dropout_p=0.0,
        softmax_scale=scaling,
        causal=False,
        deterministic=os.environ.get(FLASH_DETERMINISTIC, "0") == "1",
    )


def varlen_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: WindowLayout, scaling: float
) -> torch.Tensor:
    """torch's varlen flash kernel (``torch.nn.attention.varlen``) on the packed rows; shapes as :func:`grid_sdpa`."""
    from torch.nn.attention.varlen import varlen_attn

    cu = layout.cu_seqlens
    return varlen_attn(q, k, v, cu, cu, layout.window_len, layout.window_len, scale=scaling)


KERNELS: dict[AttentionKernel, Callable[..., torch.Tensor]] = {
    "sdpa": grid_sdpa,
    "sdpa_buckets": bucketed_sdpa,
    "eager": grid_eager,
    "flash": varlen_flash,
    "varlen": varlen_torch,
}


def encoder_layer_forward(layer: nn.Module, hidden: torch.Tensor, attend: AttendFn) -> torch.Tensor:
    """One Whisper-style pre-norm block (``Qwen2_5OmniAudioEncoderLayer.forward``) on packed rows ``[N, d]``.

    Uses the layer's own modules; ``attend`` maps q/k/v ``[N, heads, head_dim]``
    to the attention output. No dropout, as in HF's layer (which applies none);
    fp16 activations are clamped to ``finfo.max - 1000`` exactly as HF does.
    """
    attn = layer.self_attn
    num_rows = hidden.shape[0]
    heads = (num_rows, attn.num_heads, attn.head_dim)
    residual = hidden
    normed = layer.self_attn_layer_norm(hidden)
    q = attn.q_proj(normed).reshape(heads)
    k = attn.k_proj(normed).reshape(heads)
    v = attn.v_proj(normed).reshape(heads)
    hidden = residual + attn.out_proj(attend(q, k, v).reshape(num_rows, -1))
    residual = hidden
    hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
    if hidden.dtype == torch.float16:
        clamp = torch.finfo(torch.float16).max - FP16_CLAMP_MARGIN
        hidden = hidden.clamp(min=-clamp, max=clamp)
    return hidden


_compiled_layer_forward: Callable[[nn.Module, torch.Tensor, AttendFn], torch.Tensor] | None = None


@contextmanager
def compiled_layers(backend: str = "inductor") -> Iterator[None]:
    """Inside the ``with`` block, every packed layer runs through ``torch.compile(dynamic=True)``.

    An option for benchmarks (``bench.compile=inductor``); ``backend="eager"`` only traces (a cheap
    check that the layer compiles). Shapes vary with every batch, hence ``dynamic=True``.
    """
    global _compiled_layer_forward
    previous = _compiled_layer_forward
    _compiled_layer_forward = torch.compile(encoder_layer_forward, dynamic=True, backend=backend)
    try:
        yield
    finally:
        _compiled_layer_forward = previous


def run_layers(
    layers: nn.ModuleList, hidden: torch.Tensor, layout: WindowLayout, kernel: AttentionKernel
) -> torch.Tensor:
    """The transformer stack on packed rows ``[N, d]`` whose attention is confined to ``layout``'s windows.

    One attention call per layer for the whole batch. Honours HF's per-layer
    activation checkpointing (``encoder.activation_checkpointing_enable()``, ``gradient_checkpointing_enable()``
    before transformers 5.23, sets ``layer.gradient_checkpointing`` and its checkpoint function) when training
    with grad enabled, as HF's ``GradientCheckpointingLayer`` does. Returns ``[N, d]``.
    """
    if hidden.shape[0] != layout.num_rows:
        raise ValueError(f"hidden has {hidden.shape[0]} rows but the layout holds {layout.num_rows}")
    kernel_fn, layer_forward = KERNELS[kernel], _compiled_layer_forward or encoder_layer_forward
    for layer in layers:
        scaling = layer.self_attn.scaling

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float = scaling) -> torch.Tensor:
            return kernel_fn(q, k, v, layout, scaling)

        if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
            checkpoint_fn = getattr(layer, "_gradient_checkpointing_func", partial(checkpoint, use_reentrant=False))
            hidden = checkpoint_fn(partial(layer_forward, layer, attend=attend), hidden)
        else:
            hidden = layer_forward(layer, hidden, attend)
    return hidden


class StackRunner(Protocol):
    """Runs a windowed stack another way (:class:`~contaudio.encoders.graphs.CudaGraphStacks`), or returns None."""

    def run(
        self, layers: nn.ModuleList, hidden: torch.Tensor, window_rows: torch.Tensor, kernel: AttentionKernel
    ) -> torch.Tensor | None: ...


_stack_runner: StackRunner | None = None


@contextmanager
def stack_runner(runner: StackRunner | None) -> Iterator[None]:
    """Inside the ``with`` block, :func:`run_windowed_stack` without grad hands its stack to ``runner`` first
    (None: no change)."""
    global _stack_runner
    previous = _stack_runner
    _stack_runner = runner if runner is not None else previous
    try:
        yield
    finally:
        _stack_runner = previous


# CPU: rows per pass through the layer stack. Windows are independent, so a batch can go through the
# stack in passes of whole windows; passes of ~1k rows ran the 7B tower 15 % faster than one pass of 4k
# rows on a 2-core AMX machine (activations stay in cache; the weights are re-read, cheaply). CUDA: one pass.
CPU_ROWS_PER_PASS = 1024


def window_passes(window_rows: torch.Tensor, max_rows: int) -> list[tuple[int, int]]:
    """Cut consecutive windows into passes of about ``max_rows`` rows: ``[(first window, end window), ...]``.

    A window starts a new pass when its first row reaches the next multiple of ``max_rows``, so
    a pass holds fewer than ``max_rows`` + one window of rows.

    >>> window_passes(torch.tensor([100] * 5 + [30]), 250)
    [(0, 3), (3, 5), (5, 6)]
    """
    starts = F.pad(window_rows.cumsum(0)[:-1], (1, 0))
    passes = starts // max_rows
    bounds = [0, *((passes[1:] != passes[:-1]).nonzero().flatten() + 1).tolist(), len(window_rows)]
    return list(itertools.pairwise(bounds))


def run_windowed_stack(
    layers: nn.ModuleList,
    hidden: torch.Tensor,
    window_rows: torch.Tensor,
    kernel: AttentionKernel,
    layout: WindowLayout | None = None,
) -> torch.Tensor:
    """:func:`run_layers` on packed rows ``[N, d]`` cut into windows of ``window_rows (num_windows,)``.

    ``"sdpa_buckets"`` (CPU) puts the rows in length-sorted window order first and back after
    (everything but attention is row-wise, so the order is free), giving one SDPA call per
    distinct window length, and runs passes of :data:`CPU_ROWS_PER_PASS` rows. The other
    kernels take all rows in one pass, on ``layout`` when the caller built it already
    (once per batch); inside :func:`stack_runner` (``cuda_graphs=True``), without grad, a runner may take the
    stack instead (:mod:`contaudio.encoders.graphs`). Returns ``[N, d]``.
    """
    runner = _stack_runner
    if runner is not None and not torch.is_grad_enabled():
        out = runner.run(layers, hidden, window_rows, kernel)
        if out is not None:
            return out
    if kernel != "sdpa_buckets":
        layout = layout if layout is not None else WindowLayout.from_window_rows(window_rows, hidden.device)
        return run_layers(layers, hidden, layout, kernel)
    index = None
    if len(window_rows.unique()) > 1:
        window_rows, index = sort_windows(window_rows)
        hidden = hidden.index_select(0, to_device(index, hidden.device))
    row_starts = F.pad(window_rows.cumsum(0), (1, 0)).tolist()
    outputs = []
    for first, end in window_passes(window_rows, CPU_ROWS_PER_PASS):
        layout = WindowLayout.from_window_rows(window_rows[first:end], hidden.device)
        outputs.append(run_layers(layers, hidden[row_starts[first] : row_starts[end]], layout, kernel))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out if index is None else out.index_select(0, to_device(torch.argsort(index), out.device))


def windowed_hidden_states(
    layers: nn.ModuleList,
    hidden: torch.Tensor,
    window_rows: torch.Tensor,
    kernel: AttentionKernel,
    wanted: tuple[int, ...],
    layout: WindowLayout | None = None,
) -> torch.Tensor:
    """HF's ``output_hidden_states`` entries ``wanted`` of a windowed stack (0: its input ``hidden [N, d]``,
    ``i``: layer ``i``'s output), running the layers only up to the deepest one: ``[len(wanted), N, d]``."""
    states = {0: hidden}
    done = 0
    for stop in sorted(set(wanted) - {0}):
        hidden = run_windowed_stack(layers[done:stop], hidden, window_rows, kernel, layout)
        states[stop], done = hidden, stop
    return torch.stack([states[index] for index in wanted])


# ------------------------------------------------------------ chunking and pooling
def chunk_frames_per_clip(lengths: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each clip into ``chunk_frames``-frame chunks (the last may be shorter).

    lengths: ``(B,)`` mel frames per clip (CPU, >= 1). Returns, for every chunk
    in clip order then time order, ``(num_chunks,)`` tensors: its frames, its
    clip, and its index within the clip.

    >>> frames, clips, index = chunk_frames_per_clip(torch.tensor([450, 200, 3]), 200)
    >>> frames.tolist(), clips.tolist(), index.tolist()
    ([200, 200, 50, 200, 3], [0, 0, 0, 1, 2], [0, 1, 2, 0, 0])
    """
    counts = ceil_div(lengths, chunk_frames)  # (B,)
    clip_of_chunk = torch.repeat_interleave(torch.arange(len(lengths)), counts)
    first_chunk = F.pad(counts.cumsum(0)[:-1], (1, 0))
    index_in_clip = torch.arange(len(clip_of_chunk)) - first_chunk[clip_of_chunk]
    chunk_lengths = (lengths[clip_of_chunk] - index_in_clip * chunk_frames).clamp(max=chunk_frames)
    return chunk_lengths, clip_of_chunk, index_in_clip


def mel_chunks(mel: torch.Tensor, lengths: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded mel batch -> HF's chunked conv input.

    mel: ``[B, M_max, n_mels]``; lengths: ``(B,)`` CPU. Returns
    ``chunks [num_chunks, n_mels, W]`` (W = the longest chunk; frames past each
    chunk's end are zero, whatever the batch padding held) and
    ``chunk_lengths (num_chunks,)`` on CPU.
    """
    batch, _, n_mels = mel.shape
    max_len = int(lengths.max())
    width = min(chunk_frames, max_len)
    per_clip = ceil_div(max_len, width)
    grid = F.pad(mel[:, :max_len], (0, 0, 0, per_clip * width - max_len)).reshape(batch * per_clip, width, n_mels)
    chunk_lengths, clip_of_chunk, index_in_clip = chunk_frames_per_clip(lengths, chunk_frames)
    chunks = grid.index_select(0, to_device(clip_of_chunk * per_clip + index_in_clip, mel.device))  # [n, W, n_mels]
    valid = torch.arange(width) < chunk_lengths[:, None]  # [num_chunks, W]
    chunks = torch.where(to_device(valid, mel.device)[:, :, None], chunks, 0.0)
    return chunks.transpose(1, 2), chunk_lengths


def pool_group_starts(rows_per_clip: torch.Tensor, stride: int) -> torch.Tensor:
    """First index of each ``stride``-row average-pool group in the packed rows of all clips.

    rows_per_clip: ``(B,)``. Each clip keeps ``T // stride`` groups of its own rows (a
    short last group is dropped), as HF's ``AvgPool1d(stride, stride)`` over the clip.
    Returns ``(sum T // stride,)`` int64.

    >>> pool_group_starts(torch.tensor([5, 1, 4]), 2).tolist()
    [0, 2, 6, 8]
    """
    groups = rows_per_clip // stride
    offsets = F.pad(rows_per_clip.cumsum(0)[:-1], (1, 0))
    group_offsets = F.pad(groups.cumsum(0)[:-1], (1, 0))
    group_index = torch.arange(int(groups.sum())) - torch.repeat_interleave(group_offsets, groups)
    return torch.repeat_interleave(offsets, groups) + group_index * stride


def check_lengths(mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Validate ``lengths (B,)`` against ``mel [B, M_max, n_mels]``; returns them as CPU int64."""
    lengths = lengths.detach().to("cpu", torch.long)
    if mel.ndim != 3 or lengths.shape != (mel.shape[0],) or mel.shape[0] == 0:
        raise ValueError(
            f"expected mel [B, M_max, n_mels] and lengths [B], got {tuple(mel.shape)}, {tuple(lengths.shape)}"
        )
    if int(lengths.min()) < 1 or int(lengths.max()) > mel.shape[1]:
        raise ValueError(f"lengths must lie in 1..M_max={mel.shape[1]}, got {lengths.tolist()}")
    return lengths


# ------------------------------------------------------------ a torch bug on CPU
# torch 2.13 on CPU: a bfloat16 Conv2d (k3 s2 p1) whose input is fewer than 3 frames wide returns
# garbage (errors of O(1) up to 1e37, or NaN), which HF's own forward inherits for clips of <= 8
# frames. Such narrow convs run in float32 here (tests/encoders/test_packed.py shows the bug).
BF16_CPU_CONV_MIN_WIDTH = 3


def conv2d_bf16_safe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, computed in float32 (cast back) where CPU bf16 gets narrow inputs wrong."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape[-1] < BF16_CPU_CONV_MIN_WIDTH:
        bias = None if conv.bias is None else conv.bias.float()
        return F.conv2d(x.float(), conv.weight.float(), bias, conv.stride, conv.padding).to(x.dtype)
    return conv(x)
