"""Shared fixtures: tiny encoders with random weights, tiny checkpoints saved to disk, test audio.

Builders live in ``tests/helpers/``. Nothing here touches a network: HF_HUB_OFFLINE is set for
the whole session so a cache miss fails at once instead of retrying for ~25 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import pytest
import torch
from helpers import checkpoints as ck
from helpers.audio import speech_clips_16k
from helpers.families import CASE_PARAMS, FAMILY_CASES, FamilyCase, collect_unless_unavailable

from contaudio import ContinuousAudioIO

# tests/integration/ runs against the real ESPnet package, in its own pinned environment (`make test-espnet`), on
# its own: its conftest points the HF cache at tiny checkpoints before transformers is imported.
collect_ignore = ["integration"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs a worker per core, up to 4), each worker takes its share of the cores:
    torch's default of every core per process would oversubscribe them."""
    if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    """``test_<family>.py`` of a family the installed transformers lacks is one skip naming the version it needs."""
    return collect_unless_unavailable((yield), file_path.stem.removeprefix("test_"), file_path, parent)


@pytest.fixture(scope="session")
def tiny_io() -> ContinuousAudioIO:
    """The tiny Qwen2.5-Omni card with random weights, float32 on CPU."""
    return ContinuousAudioIO(encoder_hf_model_tag=ck.TINY_QWEN_OMNI, weights="random", dtype="float32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def speech_clips() -> dict[str, np.ndarray]:
    """The committed speech clips as mono float32 at 16 kHz."""
    return speech_clips_16k()


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, tuple]:
    """Lazily built ``{family: (directory, HF model)}``: one full tiny checkpoint per family, saved once."""

    class Checkpoints(dict):
        def __missing__(self, family: str) -> tuple:
            case = next(c for c in FAMILY_CASES if c.family == family)
            directory = tmp_path_factory.mktemp(f"tiny-{family}")
            self[family] = (directory, case.save(directory))
            return self[family]

    return Checkpoints()


@pytest.fixture(scope="session")
def tiny_omni_checkpoint(family_checkpoints):
    """(directory, model): a tiny random full Qwen2.5-Omni saved as several safetensors shards."""
    return family_checkpoints["qwen2_5_omni"]


@pytest.fixture(scope="session")
def tiny_qwen3_omni_checkpoint(family_checkpoints):
    return family_checkpoints["qwen3_omni"]


@pytest.fixture(scope="session")
def tiny_qwen2_audio_checkpoint(family_checkpoints):
    return family_checkpoints["qwen2_audio"]


@pytest.fixture(scope="session")
def tiny_whisper_checkpoint(family_checkpoints):
    """(directory, model): a tiny random full Whisper saved as one model.safetensors."""
    return family_checkpoints["whisper"]


@pytest.fixture(scope="session")
def tiny_voxtral_checkpoint(family_checkpoints):
    return family_checkpoints["voxtral"]


@pytest.fixture
def one_thread():
    """Run a test on one CPU thread: tiny models gain nothing from more, and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=CASE_PARAMS, ids=str)
def case(request) -> FamilyCase:
    """Each row of the conformance table (``tests/helpers/families.py``)."""
    return request.param
