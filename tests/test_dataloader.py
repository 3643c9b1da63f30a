"""copy_for_worker() in a real DataLoader (fork and spawn workers), and without its checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from helpers.audio import load_speech, noise
from helpers.checkpoints import save_tiny_qwen2_5_omni
from helpers.spawn_targets import ClipDataset
from torch.utils.data import DataLoader

from contaudio import ContinuousAudioIO

NUM_WORKERS = 2


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, int]]:
    """Mixed clips: int16 speech at 16 and 22.05 kHz, stereo float, short and too-short noise."""
    rng = np.random.default_rng(7)
    stereo = np.stack([noise(rng, 24_000), noise(rng, 24_000)])
    return [
        load_speech("quick_brown_fox_16k.wav"),
        load_speech("numbers_22k.wav"),
        (stereo, 16000),
        (noise(rng, 5_000), 44100),
        (noise(rng, 300), 16000),  # 2 mel frames: 0 rows
    ]


def expected_outputs(io: ContinuousAudioIO, clips) -> list[tuple[int, np.ndarray]]:
    return [io.preprocess(clip)[1] for clip in clips]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_copies_in_a_dataloader(tiny_io, clips, start_method: str) -> None:
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{start_method} start method not available on this platform")
    dataset = ClipDataset(tiny_io.copy_for_worker(), clips)
    assert len(pickle.dumps(dataset.io)) < 50_000  # what spawn sends each worker: no weights
    loader = DataLoader(
        dataset,
        batch_size=None,  # one item at a time, numpy -> tensor by default_convert
        num_workers=NUM_WORKERS,
        multiprocessing_context=start_method,
        timeout=120,  # a stuck worker fails the test instead of hanging it
    )
    items = sorted(loader, key=lambda item: item["index"])
    assert [item["index"] for item in items] == list(range(len(clips)))
    assert {item["worker_id"] for item in items} == set(range(NUM_WORKERS))
    assert all(item["pid"] != os.getpid() for item in items)
    # inside every worker: no encoder, no parameters
    assert all(item["num_parameters"] == 0 and not item["has_encoder"] for item in items)
    for item, (rows, mel) in zip(items, expected_outputs(tiny_io, clips), strict=True):
        assert item["rows"] == rows == item["find_length"]
        assert item["mel"].dtype == torch.float32
        np.testing.assert_array_equal(item["mel"].numpy(), mel)
    assert tiny_io.encoder is not None  # the main-process object keeps its weights


def test_worker_copy_outlives_its_checkpoint_and_pickles(tmp_path, clips) -> None:
    checkpoint = tmp_path / "tiny-omni"
    save_tiny_qwen2_5_omni(checkpoint)
    io = ContinuousAudioIO(encoder_hf_model_tag=str(checkpoint), weights="pretrained", dtype="float32")
    expected = expected_outputs(io, clips)
    worker = io.copy_for_worker()
    shutil.rmtree(checkpoint)
    assert not checkpoint.exists()
    restored = pickle.loads(pickle.dumps(worker))
    for copy in (worker, restored):
        assert copy.encoder is None and sum(p.numel() for p in copy.parameters()) == 0
        for clip, (rows, mel) in zip(clips, expected, strict=True):
            _, (got_rows, got_mel), _ = copy.preprocess(clip)
            assert got_rows == rows == copy.find_length(clip)
            np.testing.assert_array_equal(got_mel, mel)
    # and in a worker process, with the checkpoint gone
    loader = DataLoader(ClipDataset(restored, clips), batch_size=None, num_workers=1, timeout=120)
    assert [item["rows"] for item in loader] == [rows for rows, _ in expected]
