"""ESPnet SpeechLM: ``ContinuousAudioIO`` as a ``multimodal_io`` entry of an ESPnet job.

ESPnet's SpeechLM job maps the config name ``continuous_audio`` to an IO class, asserts
``issubclass(cls, AbsIO)`` against its own ``AbsIO``, and calls ``cls(**yaml_kwargs)``. The class
here is contaudio's :class:`~contaudio.ContinuousAudioIO` that also subclasses ESPnet's ``AbsIO``
when ESPnet is importable (and is contaudio's class alone otherwise), so::

    from contaudio.integrations import espnet as contaudio_espnet
    contaudio_espnet.register()   # points ESPnet's "continuous_audio" at contaudio's class

and in the job's YAML::

    multimodal_io:
      continuous_audio:
        encoder_hf_model_tag: Qwen/Qwen2.5-Omni-7B
        dtype: bfloat16
        device: cuda

ESPnet's length-stats step adds ``skip_init_encoder: true`` itself (no weights are built then).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from contaudio.io import MODALITY
from contaudio.io import ContinuousAudioIO as _ContinuousAudioIO

log = logging.getLogger(__name__)

ESPNET_ABS_IO_MODULES = (  # where ESPnet's SpeechLM has kept its AbsIO, newest first
    "espnet2.speechlm.model.speechlm.multimodal_io.abs_io",
    "espnet2.speechlm.multimodal_io.abs_io",
)
ESPNET_JOB_MODULE = "espnet2.speechlm.model.speechlm.speechlm_job"  # its job: the name -> class map of IOs
ESPNET_JOB_IO_MAP = "_multimodal_ios"
CONFIG_NAME = "continuous_audio"


def import_first(names: tuple[str, ...]) -> ModuleType | None:
    """The first of ``names`` that imports, or None."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def espnet_abs_io() -> type | None:
    """ESPnet's own ``AbsIO`` class, or None when ESPnet's SpeechLM is not importable."""
    module = import_first(ESPNET_ABS_IO_MODULES)
    return getattr(module, "AbsIO", None) if module else None


_ESPNET_ABS_IO = espnet_abs_io()
_BASES: tuple[type, ...] = (_ContinuousAudioIO,) if _ESPNET_ABS_IO is None else (_ContinuousAudioIO, _ESPNET_ABS_IO)


class ContinuousAudioIO(*_BASES):  # type: ignore[misc]
    """contaudio's ``ContinuousAudioIO``, also an ESPnet ``AbsIO`` when ESPnet is importable.

    ESPnet's ``AbsIO.__init__(modality, is_discrete)`` runs first (it sets up the ``nn.Module``
    and its attributes), then contaudio's constructor with the YAML's keyword arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _ESPNET_ABS_IO is not None:
            _ESPNET_ABS_IO.__init__(self, modality=MODALITY, is_discrete=False)
        super().__init__(*args, **kwargs)


def register(io_map: dict[str, type] | None = None) -> dict[str, type]:
    """Point ESPnet's ``continuous_audio`` IO at contaudio's class; returns the map it changed.

    ``io_map``: the job's name -> class map; found in ESPnet's job module when omitted.
    Raises ImportError with the fix when ESPnet's SpeechLM is not installed.
    """
    if io_map is None:
        module = import_first((ESPNET_JOB_MODULE,))
        io_map = getattr(module, ESPNET_JOB_IO_MAP, None) if module else None
        if not isinstance(io_map, dict):
            raise ImportError(
                f"ESPnet's SpeechLM job ({ESPNET_JOB_MODULE}.{ESPNET_JOB_IO_MAP}) was not found; install ESPnet "
                "with SpeechLM, or pass the job's multimodal-IO map: register(io_map)"
            )
    io_map[CONFIG_NAME] = ContinuousAudioIO
    log.info("ESPnet's %r multimodal IO is now contaudio's ContinuousAudioIO", CONFIG_NAME)
    return io_map
