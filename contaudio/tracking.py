"""Result records (always written locally first) and the wandb sink.

The JSON record is the source of truth: offline wandb runs keep config and
summary inside a binary file until synced, and a tracker may fail. So a record
is written before any tracker call, and a tracker failure is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

RECORD_FILE = "record.json"
PACKAGES = ("contaudio", "torch", "transformers", "numpy", "safetensors", "soxr", "hydra-core", "wandb")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(start: Path | None = None) -> str | None:
    """HEAD of the git checkout containing ``start`` (this package by default), or None."""
    where = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Package versions, Python, CPU/GPU model, thread count and git commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "cuda": torch.version.cuda,
    }
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_record(directory: str | Path, record: dict[str, Any], filename: str = RECORD_FILE) -> Path:
    """Write ``record`` as JSON into ``directory`` atomically (temp file + rename); return the path. The file gets
    the permissions of the logs beside it (0o666 less the umask; a temporary file's 0o600 kept colleagues out)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    temporary = directory / f".{filename}.tmp-{os.getpid()}"
    text = json.dumps(record, indent=2, default=str, allow_nan=True) + "\n"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


class Sink(Protocol):
    def log_summary(self, metrics: dict[str, Any]) -> None: ...
    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None: ...
    def finish(self, failed: bool = False) -> None: ...


class NullSink:
    """Tracker off: the JSON record is all there is."""

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbSink:
    """One wandb run; every call is guarded so a tracker fault never ends the job."""

    def __init__(
        self,
        *,
        config: dict[str, Any],
        mode: str,
        project: str,
        name: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        directory: str | Path | None = None,
        init_timeout: float = 30.0,
    ) -> None:
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=project, entity=entity, name=name, group=group, tags=tags or None, config=config,
                mode=mode, dir=str(directory) if directory else None, reinit="finish_previous",
                settings=wandb.Settings(init_timeout=init_timeout, silent=True, console="off"),
            )  # fmt: skip
        except Exception as err:  # any tracker fault: log and go on
            log.warning("wandb.init failed (%s: %s); continuing with the JSON record only", type(err).__name__, err)

    def _guard(self, what: str, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as err:
            log.warning("wandb %s failed (%s: %s); the JSON record has it", what, type(err).__name__, err)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self._guard("summary", self.run.summary.update if self.run else None, flatten(metrics))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return

        def log_rows() -> None:
            import wandb

            columns = list(rows[0])
            self.run.log({name: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})

        self._guard(f"table {name}", log_rows)

    def finish(self, failed: bool = False) -> None:
        self._guard("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}`` (lists of scalars are kept as they are)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat
