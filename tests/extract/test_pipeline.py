"""The features loop's host side: one device-to-host copy per batch (never one per clip), the stage timers and
bytes in summary.json, the loader sized from the cores; on CUDA, a loop that never waits on the device."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from helpers.corpus import TINY_KWARGS

from contaudio import FeatureStore
from contaudio.extract import ExtractOptions, RankInfo, run_extract
from contaudio.extract import run as run_module
from contaudio.extract.pipeline import LoaderChoice, available_cores, default_workers, device_to_host

PER_CLIP_READS = {"to", "cpu", "item", "tolist", "numpy", "clone", "contiguous", "copy_", "__getitem__"}


class Watched(torch.Tensor):
    """An encoder output that records every torch function applied to it (results are plain tensors)."""

    calls: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(getattr(func, "__name__", str(func)))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def test_one_host_copy_per_batch_and_nothing_per_clip(corpus, tmp_path, monkeypatch) -> None:
    copies, encodes = [], []

    def counted(features, *args, **kwargs):
        copies.append(len(features))
        return device_to_host(features, *args, **kwargs)

    monkeypatch.setattr(run_module, "device_to_host", counted)
    encode_batch = run_module.ContinuousAudioIO.encode_batch

    def watched(self, mel, lengths):
        outputs = encode_batch(self, mel, lengths)
        encodes.append(len(outputs))
        return [feats.as_subclass(Watched) for feats in outputs]

    monkeypatch.setattr(run_module.ContinuousAudioIO, "encode_batch", watched)
    Watched.calls = []
    options = ExtractOptions(out=tmp_path, workers=0, max_frames=600, shard_mb=0.02)
    summary = run_extract(corpus.clips(), TINY_KWARGS, options, RankInfo())
    assert len(encodes) > 2 and copies == encodes  # one copy per encoded batch, of all its clips
    assert summary["clips_encoded"] == len(corpus.good_ids)
    reads = [name for name in Watched.calls if name in PER_CLIP_READS]
    assert reads == [] and Watched.calls.count("cat") == len(encodes), Watched.calls


def test_summary_says_where_the_time_went_and_what_was_written(extracted) -> None:
    summary = json.loads((extracted / "summary.json").read_text())
    stages = summary["stages"]
    for stage in ("decode", "preprocess", "collate", "first_batch", "wait_for_data", "encode", "copy", "copy_wait",
                  "write"):  # fmt: skip
        assert stages[f"{stage}_s"] >= 0, stage
    assert stages["decode_s"] > 0 and stages["encode_s"] > 0 and stages["write_s"] > 0
    assert set(stages["share_of_loop"]) == {"first_batch", "wait_for_data", "encode", "copy", "copy_wait", "write"}
    on_disk = sum(p.stat().st_size for p in extracted.glob("shard-*.safetensors"))
    assert summary["bytes_written"] == stages["bytes_written"] == on_disk
    assert summary["write_bytes_per_s"] == pytest.approx(on_disk / summary["loop_s"])
    assert summary["loader"] == {"workers": 0, "workers_reason": "asked for", "prefetch_factor": None,
                                 "pin_memory": False}  # fmt: skip


def test_the_loader_is_sized_from_the_cores_by_default() -> None:
    chosen = LoaderChoice.resolve(None, torch.device("cpu"), env={})
    assert chosen.workers == default_workers(available_cores()) and chosen.reason.startswith("default: min(8, ")
    per_rank = LoaderChoice.resolve(None, torch.device("cuda"), env={"LOCAL_WORLD_SIZE": "2"})
    assert per_rank.workers == default_workers(available_cores(), 2) and per_rank.pin_memory
    assert LoaderChoice.resolve(3, torch.device("cpu")).record() == {
        "workers": 3, "workers_reason": "asked for", "prefetch_factor": 2, "pin_memory": False}  # fmt: skip


def test_a_host_copy_owns_its_rows() -> None:
    """On the CPU the batch's rows are one new tensor in the stored dtype, never a view of the encoder's output."""
    flat = torch.randn(7, 4)
    host = device_to_host(list(flat.split([3, 4])), torch.bfloat16)
    assert host.ready is None and host.wait() == 0.0 and host.rows.dtype == torch.bfloat16
    assert host.rows.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()
    torch.testing.assert_close(host.rows, flat.to(torch.bfloat16), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_loop_never_waits_on_the_device(corpus, extracted, tmp_path, monkeypatch) -> None:
    """The whole encode loop under sync debug mode "error" (any host sync raises); same features as on the CPU."""
    loop = run_module.encode_shards

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return loop(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(run_module, "encode_shards", strict)
    options = ExtractOptions(out=tmp_path, workers=0, max_frames=600, shard_mb=0.02)
    summary = run_extract(corpus.clips(), {**TINY_KWARGS, "device": "cuda"}, options, RankInfo())
    assert summary["loader"]["pin_memory"] and summary["stages"]["encode_device_s"] > 0
    gpu, cpu = FeatureStore(tmp_path), FeatureStore(extracted)
    assert sorted(gpu) == sorted(cpu)
    for clip_id in cpu:
        assert gpu[clip_id].shape == cpu[clip_id].shape, clip_id
        torch.testing.assert_close(gpu[clip_id], cpu[clip_id], atol=2e-2, rtol=2e-2)  # TF32 convolutions
