"""Importing contaudio changes no module of transformers.

A fresh interpreter imports every transformers module that importing contaudio (all of its modules) loads,
takes each one's namespace, imports contaudio, and compares: no attribute of a transformers module may be
replaced or deleted, and the only new ones allowed are what importing a submodule or a lazy module's
own attribute lookup adds (``transformers.PreTrainedModel`` resolved on first use is the object HF's lazy
module would return, not ours). The Granite Speech extractor module, which contaudio used to patch at import
(``torchaudio`` and ``requires_backends``), is named explicitly. A probe that patches as contaudio used to
must be caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 300  # a fresh interpreter importing torch, transformers and all of contaudio
GRANITE_FEATURES = "transformers.models.granite_speech.feature_extraction_granite_speech"
IMPORT_CONTAUDIO = """
import importlib, pkgutil
import contaudio
for info in pkgutil.walk_packages(contaudio.__path__, "contaudio."):
    if info.name.rsplit(".", 1)[-1] in ("__main__", "conftest"):  # scripts and pytest plugins, not the library
        continue
    try:
        importlib.import_module(info.name)
    except ImportError:  # a module for a client framework this environment lacks
        pass
"""
# contaudio's old import-time install, as a fault: the probe must report both attributes
OLD_INSTALL = f"""
import {GRANITE_FEATURES} as module
from contaudio.features.torchaudio_mel import STAND_IN, requires_backends_but_torchaudio
module.torchaudio = STAND_IN
module.requires_backends = requires_backends_but_torchaudio
"""
PROBE = r'''
import importlib, json, sys, types

pre_import, then_run = json.loads(sys.argv[1]), sys.argv[2]
IGNORED = {"__warningregistry__"}  # the warnings module's per-module record


def transformers_modules():
    return {name: module for name, module in list(sys.modules.items())
            if name.split(".")[0] == "transformers" and isinstance(module, types.ModuleType)}


def added_by_import(module, key, value):
    """A submodule bound on import, or what a lazy module's own lookup binds (HF's object, not a stand-in)."""
    if sys.modules.get(f"{module.__name__}.{key}") is value:
        return True
    if key in getattr(module, "_objects", {}):
        return module._objects[key] is value
    if key in getattr(module, "_object_missing_backend", {}):
        return getattr(value, "__name__", None) == key
    if key in getattr(module, "_class_to_module", {}):
        return getattr(module._get_module(module._class_to_module[key]), key, None) is value
    return False


for name in pre_import:
    importlib.import_module(name)
before = {name: dict(vars(module)) for name, module in transformers_modules().items()}
exec(then_run)
changes = []
for name, old in before.items():
    module = sys.modules.get(name)
    if module is None:
        changes.append(f"{name}: removed from sys.modules")
        continue
    new = vars(module)
    for key, value in old.items():
        if key in IGNORED:
            continue
        if key not in new:
            changes.append(f"{name}.{key}: deleted")
        elif new[key] is not value:
            changes.append(f"{name}.{key}: replaced by {new[key]!r}")
    for key in sorted(new.keys() - old.keys() - IGNORED):
        if not added_by_import(module, key, new[key]):
            changes.append(f"{name}.{key}: added ({new[key]!r})")
print(json.dumps({"loaded": sorted(transformers_modules()), "checked": sorted(before), "changes": changes}))
'''


def probe(pre_import: list[str], then_run: str) -> dict:
    """Run :data:`PROBE` in a fresh interpreter: import ``pre_import``, snapshot transformers, run ``then_run``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(pre_import), then_run],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded_by_contaudio() -> list[str]:
    """Every transformers module importing all of contaudio loads (in a fresh interpreter)."""
    loaded = probe([], IMPORT_CONTAUDIO)["loaded"]
    assert GRANITE_FEATURES in loaded, "contaudio no longer loads HF's Granite extractor: update this test"
    return loaded


def test_importing_contaudio_changes_no_transformers_module(loaded_by_contaudio) -> None:
    report = probe(loaded_by_contaudio, IMPORT_CONTAUDIO)
    assert set(loaded_by_contaudio) <= set(report["checked"])
    assert report["changes"] == []


def test_the_probe_catches_contaudios_old_import_time_install(loaded_by_contaudio) -> None:
    report = probe(loaded_by_contaudio, IMPORT_CONTAUDIO + OLD_INSTALL)
    assert f"{GRANITE_FEATURES}.requires_backends" in " ".join(report["changes"])
    torchaudio_changed = [change for change in report["changes"] if change.startswith(f"{GRANITE_FEATURES}.torchaudio")]
    assert torchaudio_changed, report["changes"]  # added where torchaudio is missing, replaced where it is installed


def test_the_probe_catches_a_replaced_top_level_attribute(loaded_by_contaudio) -> None:
    """A patch anywhere in transformers, not just the module this test names."""
    report = probe(loaded_by_contaudio, IMPORT_CONTAUDIO + "import transformers.utils as u\nu.logging = None\n")
    assert report["changes"] == ["transformers.utils.logging: replaced by None"]
