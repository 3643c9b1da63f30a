"""The hub ids ESPnet 202611's ``ContinuousAudioIO`` accepts, and tiny checkpoints saved under them in an HF cache.

ESPnet's class loads by hub id only; the integration tests give it these ids in a private HF cache
(``tests/integration/conftest.py``) whose snapshots are tiny random checkpoints built by transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from helpers import checkpoints as ck

QWEN_OMNI_7B = "Qwen/Qwen2.5-Omni-7B"
QWEN3_OMNI = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # any commit hash: the cache maps refs/main to it
SPEAKERS_FILE = "spk_dict.pt"  # Qwen2.5-Omni's talker voices: its from_pretrained requires the file (empty here)


def save_tiny_qwen2_5_omni_repo(directory: Path):
    """The tiny full Qwen2.5-Omni laid out as its hub repo is, ``spk_dict.pt`` included."""
    model = ck.save_tiny_qwen2_5_omni(directory)
    torch.save({}, Path(directory) / SPEAKERS_FILE)
    return model


SAVERS: dict[str, Callable] = {QWEN_OMNI_7B: save_tiny_qwen2_5_omni_repo, QWEN3_OMNI: ck.save_tiny_qwen3_omni}


def hub_snapshot(cache: str | Path, repo_id: str) -> Path:
    """``repo_id``'s snapshot folder in the HF cache ``cache`` (``models--org--name/snapshots/<hash>``), refs set."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def hide_espnet(monkeypatch) -> None:
    """Make every ``espnet2`` import fail in this test, as without ESPnet (also where it is installed)."""
    import sys

    for name in [n for n in sys.modules if n == "espnet2" or n.startswith("espnet2.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "espnet2", None)
