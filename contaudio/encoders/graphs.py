"""CUDA graphs for small batches: the windowed layer stack replayed from one graph per bucket of padded shapes.

A clip or two is launch-bound on a GPU: the 7B tower's 32 layers issue ~15 kernels each, every one through
Python, and at 5 s x 1 the GPU idles between them (3.6 % MFU on an H200). ``ContinuousAudioIO(cuda_graphs=True)``
replays the layer stack (:func:`~contaudio.encoders.packed.run_windowed_stack`, the bulk of the forward's kernel
launches) of every family built on it (``EncoderFamily.graph_stack``: Qwen2.5-Omni, Qwen3-Omni, Qwen3-ASR,
Qwen2-Audio, Audio Flamingo 3) from a captured CUDA graph: one launch for all layers. The conv front end and
the head stay eager (a few kernels each).

Static shapes. A graph replays fixed shapes, so a batch's attention windows are laid out on a padded grid of
``GridBucket.windows`` windows (the next power of two) x ``GridBucket.window_len`` rows (the longest window,
rounded up to :data:`ROW_ALIGN`); real rows sit at the start of their window, padding rows are zero and masked as
keys by a key-mask buffer (a padding window keeps its first key, so every softmax stays finite). Every window
attends only its own real keys and everything else is row-wise, so a real row never sees a padding row. One
graph is captured per bucket the first time it is met (after warm-up runs on a side stream, as torch's recipe
asks) and replayed after that; the graphs share one memory pool.

Exactness. A replay runs the same kernels on the same buffers as an eager call of :func:`grid_stack`, so it is
bitwise equal to it (``tests/encoders/test_graphs_gpu.py``); :func:`grid_stack` on the padded grid equals the
packed eager stack within the dtype's tolerance (``tests/encoders/test_graphs.py``, on CPU too).

When the graph is not used: with grad enabled (graphs are for inference; training runs eagerly), on CPU
(refused at construction: nothing to gain), and for a grid over :data:`GRAPH_MAX_ROWS` rows (a large batch is
compute-bound: its launches are already amortised; it runs eagerly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contaudio.encoders.packed import (
    AttentionKernel,
    WindowLayout,
    equal_length_runs,
    run_layers,
    to_device,
    window_grid,
)
from contaudio.lengths import ceil_div

log = logging.getLogger(__name__)

ROW_ALIGN = 16  # a window's length bucket: its longest window rounded up to a multiple of this many rows
GRAPH_MAX_ROWS = 8192  # a grid of more rows runs eagerly (compute-bound: one graph per shape would buy nothing)
WARMUP_RUNS = 3  # eager runs on a side stream before a capture (lazy cuBLAS/cuDNN set-up stays out of the graph)


def next_power_of_two(count: int) -> int:
    """The least power of two >= ``count`` (>= 1).

    >>> [next_power_of_two(n) for n in (1, 2, 3, 5, 64, 65)]
    [1, 2, 4, 8, 64, 128]
    """
    return 1 << max(count - 1, 0).bit_length()


@dataclass(frozen=True)
class GridBucket:
    """The padded shape a batch's windows are laid out on: ``windows x window_len`` rows."""

    windows: int
    window_len: int

    @property
    def rows(self) -> int:
        return self.windows * self.window_len


def grid_bucket(window_rows: torch.Tensor) -> GridBucket:
    """The bucket of a batch with ``window_rows (num_windows,)`` rows per window.

    >>> grid_bucket(torch.tensor([100, 100, 50]))
    GridBucket(windows=4, window_len=112)
    """
    return GridBucket(next_power_of_two(len(window_rows)), ceil_div(int(window_rows.max()), ROW_ALIGN) * ROW_ALIGN)


def grid_index(window_rows: torch.Tensor, bucket: GridBucket) -> torch.Tensor:
    """``(N,)`` int64: the grid row of each packed row (window by window, real rows first in their window).

    >>> grid_index(torch.tensor([2, 1]), GridBucket(windows=2, window_len=4)).tolist()
    [0, 1, 4]
    """
    return window_grid(window_rows, bucket.window_len).flatten().nonzero().flatten()


def grid_key_mask(window_rows: torch.Tensor, bucket: GridBucket) -> torch.Tensor:
    """``[windows, 1, 1, window_len]`` bool: True for a real key. A padding window keeps its first key (its rows
    stay finite; nothing reads them).

    >>> grid_key_mask(torch.tensor([2]), GridBucket(windows=2, window_len=3)).flatten().tolist()
    [True, True, False, True, False, False]
    """
    keys = torch.ones(bucket.windows, dtype=torch.long)
    keys[: len(window_rows)] = window_rows
    return window_grid(keys, bucket.window_len)[:, None, None, :]


def grid_kernel(kernel: AttentionKernel) -> AttentionKernel:
    """The kernel a padded grid runs: HF's eager math where the encoder asks for eager, one masked SDPA call over
    the grid otherwise (the varlen kernels compute the same attention on packed rows, which have no fixed shape)."""
    return "eager" if kernel == "eager" else "sdpa"


def grid_stack(
    layers: nn.ModuleList, grid: torch.Tensor, key_mask: torch.Tensor, kernel: AttentionKernel
) -> torch.Tensor:
    """The layer stack on a padded grid ``[windows * window_len, d]`` whose keys ``key_mask`` marks: the same
    shapes whatever the batch held (what a CUDA graph captures). Returns ``[windows * window_len, d]``."""
    windows, window_len = key_mask.shape[0], key_mask.shape[-1]
    window_rows = torch.full((windows,), window_len)
    layout = WindowLayout(
        window_rows=window_rows,
        window_len=window_len,
        num_rows=windows * window_len,
        row_index=None,  # every grid row is a row of the stack
        key_mask=key_mask,
        cu_seqlens=key_mask.new_empty(0, dtype=torch.int32),  # read by the varlen kernels only, never here
        buckets=equal_length_runs(window_rows),
    )
    return run_layers(layers, grid, layout, grid_kernel(kernel))


@dataclass(frozen=True)
class CapturedStack:
    """One bucket's graph and the buffers it reads (``grid``, ``key_mask``) and writes (``output``)."""

    graph: torch.cuda.CUDAGraph
    grid: torch.Tensor
    key_mask: torch.Tensor
    output: torch.Tensor


class CudaGraphStacks:
    """Runs a windowed layer stack from a CUDA graph per (layers, bucket, dtype, kernel); see the module docstring.

    ``capture=False`` runs :func:`grid_stack` eagerly instead of replaying a graph: the same padding, indices and
    slicing, on any device (how the CPU tests exercise everything but the capture itself).
    """

    def __init__(self, capture: bool = True, max_rows: int = GRAPH_MAX_ROWS) -> None:
        self.capture = capture
        self.max_rows = max_rows
        self.graphs: dict[tuple[Any, ...], CapturedStack] = {}
        self.pool: Any = None  # the memory pool every graph shares
        self.replays = 0
        self.eager_batches = 0  # batches whose grid was over max_rows

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (a worker copy) carry the settings, never the graphs (device objects, rebuilt where used)."""
        return {"capture": self.capture, "max_rows": self.max_rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def run(
        self, layers: nn.ModuleList, hidden: torch.Tensor, window_rows: torch.Tensor, kernel: AttentionKernel
    ) -> torch.Tensor | None:
        """The stack's output ``[N, d]`` for packed rows ``hidden [N, d]`` in windows ``window_rows`` (CPU), or None
        when the batch's grid is over ``max_rows`` (the caller runs it eagerly)."""
        bucket = grid_bucket(window_rows)
        if bucket.rows > self.max_rows:
            self.eager_batches += 1
            return None
        index = to_device(grid_index(window_rows, bucket), hidden.device)
        key_mask = to_device(grid_key_mask(window_rows, bucket), hidden.device)
        if self.capture:
            entry = self._captured(layers, bucket, hidden, kernel)
            entry.grid.zero_().index_copy_(0, index, hidden)
            entry.key_mask.copy_(key_mask)
            entry.graph.replay()
            self.replays += 1
            output = entry.output
        else:
            grid = hidden.new_zeros((bucket.rows, hidden.shape[1])).index_copy_(0, index, hidden)
            output = grid_stack(layers, grid, key_mask, kernel)
        return output.index_select(0, index)  # a new tensor: the next replay overwrites the output buffer

    def _captured(
        self, layers: nn.ModuleList, bucket: GridBucket, hidden: torch.Tensor, kernel: AttentionKernel
    ) -> CapturedStack:
        # the layers' parameter addresses are part of the key: a graph reads them by address, so a stack moved or
        # re-typed (``.to()`` gives every parameter new storage) gets a graph of its own
        weights = tuple(next(layer.parameters()).data_ptr() for layer in layers)
        key = (weights, bucket, hidden.dtype, hidden.device, hidden.shape[1], grid_kernel(kernel),
               torch.is_inference_mode_enabled())  # fmt: skip
        if (entry := self.graphs.get(key)) is None:
            entry = self.graphs[key] = self._capture(layers, bucket, hidden, kernel)
            log.info(
                "captured a CUDA graph of %d layers for %d windows x %d rows (%s; %d graph(s) held)",
                len(layers),
                bucket.windows,
                bucket.window_len,
                hidden.dtype,
                len(self.graphs),
            )
        return entry

    def _capture(
        self, layers: nn.ModuleList, bucket: GridBucket, hidden: torch.Tensor, kernel: AttentionKernel
    ) -> CapturedStack:
        device = hidden.device
        grid = hidden.new_zeros((bucket.rows, hidden.shape[1]))
        key_mask = torch.ones((bucket.windows, 1, 1, bucket.window_len), dtype=torch.bool, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                grid_stack(layers, grid, key_mask, kernel)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a writer thread copying the previous batch to the host may call CUDA during the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = grid_stack(layers, grid, key_mask, kernel)
        self.pool = graph.pool()
        return CapturedStack(graph, grid, key_mask, output)
