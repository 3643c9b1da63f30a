"""``python -m contaudio.integrations.espnet <espnet module> [args]``: contaudio's class in every process ESPnet starts.

Which class a job really built is observed, not inferred: a test-only ``sitecustomize.py`` (written into a tmp
folder put first on PYTHONPATH, so it runs in the parent and in every spawned child) wraps ESPnet's
``SpeechLMJobTemplate.__init__`` to append one line per job built to an audit file: the process, whether it is a
multiprocessing child, ``is_train`` and the class of each IO. For ``bin/inference.py``, whose ``main()`` exits on a
machine without CUDA, the same file maps ESPnet's CUDA calls to the CPU (``is_available``/``set_device``, ``pin_memory``
and ``.to("cuda")`` of tensors and modules), so ESPnet's own main -> ``mp.Process`` (spawn) -> ``inference_worker``
runs whole: it builds the job from the YAML, loads the checkpoint, decodes and writes ``results.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENTRY = ["-m", "contaudio.integrations.espnet"]
CONTAUDIO_CLASS = "contaudio.integrations.espnet.ContinuousAudioIO"
ESPNET_CLASS = "espnet2.speechlm.model.speechlm.multimodal_io.audio.ContinuousAudioIO"

SITECUSTOMIZE = '''\
"""Test-only (tests/integration/test_entry_point.py): audit the jobs ESPnet builds; run ESPnet's CUDA calls on CPU."""
import importlib.util
import json
import multiprocessing
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:  # keep any other sitecustomize on the path working (this one shadows it)
    _other = os.path.join(os.path.abspath(_entry or "."), "sitecustomize.py")
    if os.path.dirname(_other) != _here and os.path.isfile(_other):
        _spec = importlib.util.spec_from_file_location("_chained_sitecustomize", _other)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break

import torch

from espnet2.speechlm.model.speechlm import speechlm_job


def _cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _on_cpu(to):
    def wrapped(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return to(self, *args, **kwargs)
    return wrapped


torch.cuda.is_available = lambda: True
torch.cuda.set_device = lambda device: None
torch.Tensor.to = _on_cpu(torch.Tensor.to)
torch.nn.Module.to = _on_cpu(torch.nn.Module.to)
torch.Tensor.pin_memory = lambda self, *args, **kwargs: self  # DataLoader pins when CUDA "is available"

_init = speechlm_job.SpeechLMJobTemplate.__init__


def _audited_init(self, config, is_train=False):
    _init(self, config, is_train)
    record = {
        "pid": os.getpid(),
        "child": multiprocessing.parent_process() is not None,
        "is_train": is_train,
        "ios": {name: f"{type(io).__module__}.{type(io).__qualname__}" for name, io in self.multimodal_io.items()},
    }
    with open(os.environ["CONTAUDIO_AUDIT"], "a") as audit:
        audit.write(json.dumps(record) + "\\n")


speechlm_job.SpeechLMJobTemplate.__init__ = _audited_init
'''

PARENT_ONLY = """\
import sys

from espnet2.speechlm.bin import inference

from contaudio.integrations import espnet

if __name__ == "__main__":
    espnet.register()  # in this process only: a spawned child imports this file without running this block
    sys.argv = [inference.__name__, *sys.argv[1:]]
    inference.main()
"""


@pytest.fixture
def audited(tmp_path: Path) -> dict[str, str]:
    """Environment of a subprocess whose jobs are audited into ``env["CONTAUDIO_AUDIT"]`` (see the module doc)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "CONTAUDIO_AUDIT": str(tmp_path / "audit.jsonl")}


def python(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run this interpreter with ``args`` (ESPnet's environment), output captured."""
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def audit(env: dict[str, str]) -> list[dict]:
    """The jobs built under ``env``, one record each, in build order."""
    path = Path(env["CONTAUDIO_AUDIT"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args, reason in (
        ([], "no ESPnet module given"),
        (["no_such.module"], "cannot import"),
        (["json"], "no main()"),
    ):
        done = python([*ENTRY, *args], cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "usage: python -m contaudio.integrations.espnet" in done.stderr and reason in done.stderr


def test_length_stats_builds_contaudio_class(recipe, audited: dict[str, str], tmp_path: Path) -> None:
    """ESPnet's length-stats script (job built from the YAML as is, then Pool workers) under the entry point."""
    out = tmp_path / "stats"
    args = ["espnet2.speechlm.bin.prepare_length_stats", "--train-config", str(recipe.train_yaml), "--output-dir",
            str(out), "--train-unregistered-specifier", recipe.specifier, "--num-workers", "2"]  # fmt: skip
    done = python([*ENTRY, *args], env=audited)
    assert done.returncode == 0, done.stderr[-3000:]
    [job] = audit(audited)
    assert job["is_train"] and job["ios"]["continuous_audio"] == CONTAUDIO_CLASS
    [stats] = out.glob("stats_*.jsonl")
    assert sorted(key for line in stats.read_text().splitlines() for key in json.loads(line)) == sorted(recipe.clips)


def test_train_help_runs() -> None:
    done = python([*ENTRY, "espnet2.speechlm.bin.train", "--help"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--train-config" in done.stdout


@pytest.fixture(scope="module")
def checkpoint(recipe, tmp_path_factory) -> Path:
    """``{"module": state_dict}`` of the recipe's model built with contaudio's class (what inference.py loads)."""
    import torch
    from espnet2.speechlm.model.speechlm import speechlm_job

    from contaudio.integrations import espnet

    config = yaml.safe_load(recipe.train_yaml.read_text())
    before = dict(speechlm_job._multimodal_ios)
    try:
        espnet.register()
        model = speechlm_job.SpeechLMJobTemplate(config, is_train=False).build_model()
    finally:  # other tests of this session see ESPnet's own registry
        speechlm_job._multimodal_ios.clear()
        speechlm_job._multimodal_ios.update(before)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save({"module": model.state_dict()}, path)
    return path


def inference_args(recipe, checkpoint: Path, out: Path) -> list[str]:
    """ESPnet's inference.py arguments: greedy text, 3 steps, float32, one spawned worker."""
    config = {"dtype": "float32", "enforce_modality": ["text"], "text": {"max_step": 3, "temperature": 0, "topk": 1}}
    inference_yaml = out.parent / "inference.yaml"
    inference_yaml.write_text(yaml.safe_dump(config))
    return ["--train-config", str(recipe.train_yaml), "--inference-config", str(inference_yaml),
            "--model-checkpoint", str(checkpoint), "--output-dir", str(out),
            "--test-unregistered-specifier", recipe.specifier, "--num-workers", "1"]  # fmt: skip


def test_inference_spawned_worker_builds_contaudio_class(recipe, checkpoint, audited, tmp_path: Path) -> None:
    """ESPnet's own main -> mp.Process(spawn) -> inference_worker builds the job again, with contaudio's class."""
    out = tmp_path / "inference"
    done = python([*ENTRY, "espnet2.speechlm.bin.inference", *inference_args(recipe, checkpoint, out)], env=audited)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [worker] = audit(audited)  # the parent builds no job; the spawned worker does
    assert worker["child"] and not worker["is_train"]
    assert worker["ios"]["continuous_audio"] == CONTAUDIO_CLASS
    [results] = out.rglob("results.json")
    assert sorted(json.loads(results.read_text())) == sorted(recipe.clips)


def test_parent_only_registration_does_not_reach_the_spawned_worker(recipe, checkpoint, audited, tmp_path) -> None:
    """Negative control: ``register()`` then ESPnet's main, in the parent only: the spawned worker builds ESPnet's
    class (and then cannot load a checkpoint written by contaudio's), so the test above can fail."""
    script = tmp_path / "parent_only.py"
    script.write_text(PARENT_ONLY)
    python([str(script), *inference_args(recipe, checkpoint, tmp_path / "inference")], env=audited)
    [worker] = audit(audited)
    assert worker["child"] and worker["ios"]["continuous_audio"] == ESPNET_CLASS
