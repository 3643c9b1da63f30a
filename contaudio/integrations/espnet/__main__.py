"""Run an ESPnet script with contaudio's ``ContinuousAudioIO`` registered in every process it starts.

    python -m contaudio.integrations.espnet espnet2.speechlm.bin.prepare_length_stats --train-config ... [args]

registers contaudio's class (``register()``), then runs that module's ``main()`` with ``sys.argv`` =
``[module, *args]``. The target is imported normally (not run as ``__main__``), so its functions stay picklable.

Spawned workers (ESPnet's ``bin/inference.py`` uses ``mp.set_start_method("spawn")``) start a fresh interpreter
that re-imports the parent's main module as ``__mp_main__`` and builds the job again: registration therefore sits
at this module's top level, and the target runs only under ``if __name__ == "__main__"``. Python's
multiprocessing never re-imports a module named ``*.__main__`` in a child (``multiprocessing.spawn``), so the
parent names the package itself as its main module's spec: the child then runs ``-m contaudio.integrations.espnet``
again (this file, as ``__mp_main__``), which registers and runs nothing else.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import NoReturn

from contaudio.integrations.espnet import register

USAGE = (
    "usage: python -m contaudio.integrations.espnet <espnet module with main(), e.g. espnet2.speechlm.bin.train> [args]"
)

register()  # in the parent and in every spawned child (which imports this file as __mp_main__)


def usage_error(reason: str) -> NoReturn:
    """Print the usage line and ``reason`` to stderr; exit 2 (as argparse does)."""
    print(f"{USAGE}\nerror: {reason}", file=sys.stderr)
    raise SystemExit(2)


def run(argv: list[str]) -> None:
    """Import ``argv[0]`` (a module with ``main()``) and run it with ``sys.argv = argv``; exit 2 with usage if not."""
    if not argv or argv[0].startswith("-"):
        usage_error("no ESPnet module given")
    try:
        target = importlib.import_module(argv[0])
    except ImportError as error:
        usage_error(f"cannot import {argv[0]!r}: {error}")
    if not callable(getattr(target, "main", None)):
        usage_error(f"{argv[0]!r} has no main()")
    sys.argv = list(argv)
    target.main()


if __name__ == "__main__":
    sys.modules["__main__"].__spec__ = importlib.util.find_spec(__package__)  # see the module docstring
    run(sys.argv[1:])
