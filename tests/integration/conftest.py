"""The real ESPnet SpeechLM (``espnet[speechlm]==202611``), in its own pinned environment: ``make test-espnet``.

ESPnet's ``ContinuousAudioIO`` loads its checkpoint by hub id only (``Qwen/Qwen2.5-Omni-7B`` or
``Qwen/Qwen3-Omni-30B-A3B-Instruct``), so these tests give it those ids in a private HF cache whose
snapshots are tiny random checkpoints built here by transformers itself (perturbed weights). Both
ESPnet's class and contaudio's then load the same weights through their own loading code. The
cache is set before transformers or huggingface_hub is imported, for this process and every
process it starts (ESPnet's own scripts run as subprocesses), and HF_HUB_OFFLINE stops any download.
"""

from __future__ import annotations

import os
import sys
import tempfile

if "huggingface_hub" in sys.modules or "transformers" in sys.modules:  # the cache path is read at import time
    raise RuntimeError(
        "tests/integration must run on their own, before anything imports transformers: "
        "make test-espnet (or pytest tests/integration --confcutdir=tests/integration)"
    )
HUB_CACHE = tempfile.mkdtemp(prefix="contaudio-espnet-hub-")
os.environ["HF_HUB_CACHE"] = HUB_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"

from collections.abc import Callable  # noqa: E402

import espnet2.speechlm  # noqa: E402, F401  (fails here, loudly, outside ESPnet's environment)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers.espnet_hub import SAVERS, hub_snapshot  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hub() -> Callable:
    """``tiny_hub(repo_id) -> HF model``: the tiny checkpoint saved under ``repo_id`` in the private cache (once)."""
    models: dict[str, object] = {}

    def get(repo_id: str):
        if repo_id not in models:
            models[repo_id] = SAVERS[repo_id](hub_snapshot(HUB_CACHE, repo_id))
        return models[repo_id]

    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def recipe(tiny_hub, tmp_path_factory):
    """A tiny ESPnet SpeechLM recipe (``integration.recipe``): tokenizer + LM, corpus, data json, train YAML.

    The tiny Qwen2.5-Omni is saved under ``Qwen/Qwen2.5-Omni-7B`` in the private HF cache first, so both ESPnet's
    class and contaudio's load the YAML's encoder offline.
    """
    from integration.recipe import ENCODER_TAG, build_recipe

    tiny_hub(ENCODER_TAG)
    return build_recipe(tmp_path_factory.mktemp("recipe"))
