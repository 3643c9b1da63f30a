"""``cuda_graphs=True`` without a GPU: the padded grid a graph replays (buckets, indices, key masks, the stack on
it) against the packed eager forward, for every family and mode; which families declare ``graph_stack`` (checked
both ways); the eager fallbacks; the refusals. The capture and replay themselves: ``test_graphs_gpu.py``.

:class:`CudaGraphStacks` with ``capture=False`` runs exactly what a capture records (the same padding, buffers
and slicing), eagerly, so a padding leak or a misplaced row shows here on CPU.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers.batches import random_padded_batch
from helpers.families import MODE_OVERRIDES, MODE_PARAMS, FamilyCase

from contaudio import ContinuousAudioIO
from contaudio.encoders import FAMILIES, graphs, packed
from contaudio.encoders.graphs import CudaGraphStacks, GridBucket, grid_bucket, grid_index, grid_key_mask
from contaudio.encoders.packed import stack_runner
from contaudio.io import check_cuda_graphs

LENGTHS = [45, 250, 1013]  # mel frames: one short window, a full window + a partial one, many windows
ATOL, RTOL = 1e-5, 1e-4  # float32, the same weights; the grid runs masked SDPA where CPU's eager runs unmasked SDPA
QWEN = "contaudio/tiny-qwen2.5-omni"


class CountingStacks(CudaGraphStacks):
    """The eager grid (``capture=False``), counting the stacks handed to it."""

    def __init__(self, max_rows: int = graphs.GRAPH_MAX_ROWS) -> None:
        super().__init__(capture=False, max_rows=max_rows)
        self.calls = 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return super().run(*args, **kwargs)


def build(tag: str = QWEN, **kwargs) -> ContinuousAudioIO:
    return ContinuousAudioIO(encoder_hf_model_tag=tag, weights="random", dtype="float32", **kwargs)


def mode_kwargs(mode: str) -> dict:
    """ContinuousAudioIO arguments of a conformance-table column (its Hydra overrides, read back)."""
    kwargs = dict(override.removeprefix("encoder.").split("=") for override in MODE_OVERRIDES[mode])
    if "layers" in kwargs:
        kwargs["layers"] = [int(layer) for layer in kwargs["layers"].strip("[]").split(",")]
    return kwargs


def encode(io: ContinuousAudioIO, mel: torch.Tensor, lengths: torch.Tensor, runner=None) -> list[torch.Tensor]:
    with torch.no_grad(), stack_runner(runner):
        return io.encode_batch(mel, lengths)


def assert_same_rows(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for clip, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL, msg=lambda m, clip=clip: f"clip {clip}: {m}")


# ------------------------------------------------------------------------------------------ the grid's arithmetic
@pytest.mark.parametrize("window_rows", [[1], [100, 100, 50], [7, 104, 104, 3, 104], [1500, 20]])
def test_every_packed_row_has_its_own_masked_in_grid_row(window_rows: list[int]) -> None:
    rows = torch.tensor(window_rows)
    bucket = grid_bucket(rows)
    index, mask = grid_index(rows, bucket), grid_key_mask(rows, bucket).flatten()
    assert bucket.windows >= len(rows) and bucket.window_len >= max(window_rows)
    assert bucket.window_len % graphs.ROW_ALIGN == 0 and bucket.windows & (bucket.windows - 1) == 0
    assert len(index) == sum(window_rows) and len(index.unique()) == len(index)
    assert bool(mask[index].all()) and int(mask.sum()) == sum(window_rows) + bucket.windows - len(rows)
    window_of_row = torch.repeat_interleave(torch.arange(len(rows)), rows)
    assert torch.equal(index // bucket.window_len, window_of_row)  # each row stays in its own window


# ------------------------------------------------------------------- the grid against the eager forward, per mode
@pytest.mark.parametrize(("case", "mode"), MODE_PARAMS)
def test_the_grid_equals_the_eager_stack_where_the_family_declares_one(case: FamilyCase, mode: str) -> None:
    """A family declaring ``graph_stack`` hands its stack to the runner in every mode and the grid gives the eager
    rows; one that does not never reaches it (its declaration is checked both ways)."""
    io = build(case.card, **mode_kwargs(mode))
    mel, lengths = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    runner = CountingStacks()
    assert_same_rows(encode(io, mel, lengths, runner), encode(io, mel, lengths))
    assert (runner.calls > 0) == FAMILIES[case.family].graph_stack, f"{case.family} graph_stack is wrong"


def test_a_padding_key_let_in_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault on the grid's side: a key mask that lets padding keys in must fail the comparison."""
    io = build()
    mel, lengths = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    eager = encode(io, mel, lengths)
    monkeypatch.setattr(
        graphs,
        "grid_key_mask",
        lambda rows, bucket: torch.ones(bucket.windows, 1, 1, bucket.window_len, dtype=torch.bool),
    )
    with pytest.raises(AssertionError, match="clip 0: Tensor-likes are not close"):
        assert_same_rows(encode(io, mel, lengths, CountingStacks()), eager)


def test_a_broken_eager_stack_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault on the reference's side: the eager stack's attention off by a little must fail the comparison."""
    io = build()
    mel, lengths = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    grid = encode(io, mel, lengths, CountingStacks())
    bucketed = packed.KERNELS["sdpa_buckets"]
    monkeypatch.setitem(packed.KERNELS, "sdpa_buckets", lambda *args: bucketed(*args) * 1.001)
    with pytest.raises(AssertionError, match="clip 0: Tensor-likes are not close"):
        assert_same_rows(grid, encode(io, mel, lengths))


class ReplayedOnCpu(CudaGraphStacks):
    """The capture path on CPU: ``_capture`` gives the buffers a capture would, and a stand-in graph whose
    ``replay()`` recomputes the captured output in place from them. What it checks: each call refills the bucket's
    buffers (no rows or mask left from an earlier batch of the same bucket), one capture per bucket, and the
    output read out of the shared buffer."""

    def __init__(self) -> None:
        super().__init__(capture=True)
        self.captures = 0

    def _capture(self, layers, bucket, hidden, kernel):
        self.captures += 1
        grid = hidden.new_zeros((bucket.rows, hidden.shape[1]))
        key_mask = torch.ones((bucket.windows, 1, 1, bucket.window_len), dtype=torch.bool)
        output = graphs.grid_stack(layers, grid, key_mask, kernel)

        class Graph:
            def replay(self) -> None:
                output.copy_(graphs.grid_stack(layers, grid, key_mask, kernel))

        return graphs.CapturedStack(Graph(), grid, key_mask, output)


def test_replays_refill_their_buckets_buffers() -> None:
    io = build()
    runner = ReplayedOnCpu()
    batches = [[1013, 250], [45, 180, 600], [1013, 250], [200]]  # the first three share a bucket (8 x 112)
    for lengths in batches:
        mel, lens = random_padded_batch(lengths, n_mels=io.n_mels)
        assert_same_rows(encode(io, mel, lens, runner), encode(io, mel, lens))
    assert runner.replays == len(batches) and runner.captures == len(runner.graphs) == 2


# ------------------------------------------------------------------------------------------------ when it runs
def test_a_grid_over_max_rows_runs_eagerly() -> None:
    io = build()
    mel, lengths = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    runner = CountingStacks(max_rows=GridBucket(windows=2, window_len=112).rows)
    assert_same_rows(encode(io, mel, lengths, runner), encode(io, mel, lengths))
    assert runner.calls == 1 and runner.eager_batches == 1


def test_with_grad_the_stack_runs_eagerly() -> None:
    io = build()
    mel, lengths = random_padded_batch(LENGTHS, n_mels=io.n_mels)
    runner = CountingStacks()
    with stack_runner(runner):
        rows = io.encode_batch(mel, lengths)
    assert runner.calls == 0 and rows[0].requires_grad


# ------------------------------------------------------------------------------------------------------ refusals
def test_cuda_graphs_are_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match=r"cuda_graphs=True needs a CUDA device, got device='cpu'"):
        build(cuda_graphs=True, skip_init_encoder=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_graphs_are_refused_where_no_stack_is_replayable(family: str) -> None:
    cuda = torch.device("cuda")
    if FAMILIES[family].graph_stack:
        assert isinstance(check_cuda_graphs(True, FAMILIES[family], cuda), CudaGraphStacks)
    else:
        with pytest.raises(ValueError, match=rf"the {family} forward does not run its layers .* qwen2_5_omni"):
            check_cuda_graphs(True, FAMILIES[family], cuda)
    assert check_cuda_graphs(False, FAMILIES[family], cuda) is None


def test_a_pickled_runner_keeps_its_settings_not_its_graphs() -> None:
    runner = CudaGraphStacks(max_rows=512)
    runner.graphs["key"] = object()
    copy = pickle.loads(pickle.dumps(runner))
    assert copy.max_rows == 512 and copy.capture and copy.graphs == {}


def test_a_worker_copy_holds_no_runner() -> None:
    io = build(skip_init_encoder=True)
    io.graphs = CudaGraphStacks()
    assert pickle.loads(pickle.dumps(io.copy_for_worker())).graphs is None
    assert np.isclose(io.feature_dim(), io.copy_for_worker().feature_dim())
