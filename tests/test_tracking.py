"""Records are written before any tracker call; tracker and sweep faults never lose a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contaudio import tracking
from contaudio.tracking import NullSink, WandbSink, environment, flatten, write_record

REPO = Path(__file__).resolve().parents[1]


def test_write_record_is_complete_json(tmp_path) -> None:
    path = write_record(tmp_path / "new", {"a": 1, "nan": float("nan"), "path": Path("x")})
    data = json.loads(path.read_text())
    assert data["a"] == 1 and data["path"] == "x"
    assert [p.name for p in (tmp_path / "new").iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_record_gets_the_permissions_of_the_files_beside_it(tmp_path, umask: int) -> None:
    """0o666 less the umask, as the logs beside it (a temporary file's 0o600 kept colleagues out)."""
    before = os.umask(umask)
    try:
        path = write_record(tmp_path, {"a": 1})
        (log := tmp_path / "job.log").write_text("")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == log.stat().st_mode & 0o777 == 0o666 & ~umask


def test_environment_names_versions_and_hardware() -> None:
    env = environment()
    assert env["packages"]["torch"] and env["packages"]["transformers"] and env["cpu"]
    assert env["torch_threads"] >= 1


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1]}) == {"a/b": 1, "a/c/d": 2, "e": [1]}


def test_wandb_init_failure_is_logged_not_raised(monkeypatch, caplog) -> None:
    import wandb

    def boom(**_):
        raise RuntimeError("network is down")

    monkeypatch.setattr(wandb, "init", boom)
    sink = WandbSink(config={}, mode="online", project="p")
    sink.log_summary({"x": 1})
    sink.log_table("t", [{"a": 1}])
    sink.finish()
    assert "network is down" in caplog.text


def test_wandb_log_failure_is_logged_not_raised(caplog) -> None:
    class BrokenRun:
        class summary:
            @staticmethod
            def update(_):
                raise ValueError("summary broke")

        def log(self, _):
            raise ValueError("log broke")

        def finish(self, exit_code=0):
            raise ValueError("finish broke")

    sink = WandbSink.__new__(WandbSink)
    sink.run = BrokenRun()
    sink.log_summary({"x": 1})
    sink.log_table("t", [{"a": 1}])
    sink.finish()
    assert "summary broke" in caplog.text and "log broke" in caplog.text and "finish broke" in caplog.text


def test_wandb_offline_run_writes_locally(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sink = WandbSink(config={"k": 1}, mode="offline", project="contaudio-test", directory=tmp_path, name="t")
    assert sink.run is not None
    sink.log_summary({"a": {"b": 2.0}})
    sink.log_table("clips", [{"clip": 0, "err": 0.1}])
    sink.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_null_sink_does_nothing() -> None:
    sink = NullSink()
    sink.log_summary({})
    sink.log_table("t", [])
    sink.finish()
    assert isinstance(tracking.RECORD_FILE, str)


def test_unwritable_output_dir_is_recorded_as_error(tmp_path) -> None:
    from helpers.hydra_compose import compose_config

    from experiments import bench

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = compose_config(["experiment=ci_smoke", "strict=false", f"output_dir={blocker / 'sub'}",
                          "bench.durations_s=[1]", "bench.batch_sizes=[1]", "bench.reference=false"])  # fmt: skip
    record = bench.run(cfg)
    assert record["status"] == "error" and "record not written" in record["error"]


@pytest.mark.parametrize("tracker", ["none"])
def test_failing_job_mid_sweep_keeps_other_records(tmp_path, tracker: str) -> None:
    """A real Hydra multirun: the middle job fails, the sweep goes on, every job leaves its record."""
    sweep_dir = tmp_path / "sweep"
    tags = "contaudio/tiny-qwen2.5-omni,contaudio/no-such-card,contaudio/tiny-qwen2.5-omni"
    cmd = [
        sys.executable, "-m", "experiments.bench", "-m", "experiment=ci_smoke", "strict=false", f"tracker={tracker}",
        f"encoder.tag={tags}", "bench.durations_s=[1]", "bench.batch_sizes=[1]", "bench.preprocess_durations_s=[1]",
        "bench.reference=false", "bench.preprocess_clips=1", "bench.repeats=1", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = [json.loads((sweep_dir / str(i) / "record-bench.json").read_text())["status"] for i in range(3)]
    assert statuses == ["ok", "error", "ok"]
