"""ESPnet SpeechLM: contaudio's ``ContinuousAudioIO`` as the job's ``continuous_audio`` IO, exactly ESPnet's.

ESPnet 202611's SpeechLM job maps the config name ``continuous_audio`` to an IO class, asserts
``issubclass(cls, AbsIO)`` against its own ``AbsIO`` and calls ``cls(**yaml_kwargs)``. The class here
is contaudio's :class:`~contaudio.ContinuousAudioIO`, made to be ESPnet's class in everything a
recipe or a checkpoint can see:

* ``frontend="espnet"`` by default: the same features and lengths as ESPnet's own class (channel 0,
  torchaudio resampling, normalised unpadded extraction, ``N // 160`` frames, int32 ``seq``/``loss_mask``);
  ``frontend="processor"`` gives what the model's own HF processor gives instead.
* the tower's parameters carry ESPnet's names, ``model.audio_tower.*`` under the IO (weights its
  forward never reads are kept as buffers under their names), so checkpoints load both ways,
  by strict ``load_state_dict`` or by name (DCP), and ``freeze_param`` patterns select the same weights;
* ESPnet's constructor arguments as ESPnet takes them: ``dtype`` is any ``getattr(torch, dtype)`` name,
  ``attn_implementation`` any name transformers accepts (mapped to contaudio's kernels, logged), and
  ``device="cuda"`` on a machine without CUDA (a CPU-only length-stats node) builds no encoder
  instead of failing: ``preprocess``/``find_length`` work, ``encode_batch`` says why it cannot;
* the methods a continuous IO does not implement raise ``NotImplementedError``, as ESPnet's ``AbsIO`` does.

Point the job at it in every process, spawned workers included::

    python -m contaudio.integrations.espnet espnet2.speechlm.bin.train --train-config conf.yaml ...

or, inside one process, ``register()`` before the job is built.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

import torch

from contaudio.io import ESPNET_TOWER_PATH, MODALITY, Frontend
from contaudio.io import ContinuousAudioIO as _ContinuousAudioIO

log = logging.getLogger(__name__)

ESPNET_ABS_IO_MODULES = (  # where ESPnet's SpeechLM has kept its AbsIO, newest first
    "espnet2.speechlm.model.speechlm.multimodal_io.abs_io",
    "espnet2.speechlm.multimodal_io.abs_io",
)
ESPNET_JOB_MODULE = "espnet2.speechlm.model.speechlm.speechlm_job"  # its job: the name -> class map of IOs
ESPNET_JOB_IO_MAP = "_multimodal_ios"
CONFIG_NAME = "continuous_audio"
# attn_implementation names transformers accepts -> contaudio's packed-forward kernel (names not listed pass through)
ATTN_FROM_HF: dict[str, str | None] = {
    "flash_attention_3": "varlen",  # torch's own varlen flash kernel: the same maths on the same windows
    "flex_attention": "sdpa",
    "paged_attention": "sdpa",
    "sdpa_paged": "sdpa",
    "eager_paged": "eager",
}
CONTAUDIO_ATTN = (None, "sdpa", "eager", "flash_attention_2", "varlen")


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


def contaudio_attention(attn_implementation: str | None) -> str | None:
    """ESPnet passes ``attn_implementation`` to transformers; the kernel contaudio runs for that name (logged).

    >>> [contaudio_attention(name) for name in ("flash_attention_3", "sdpa", "kernels-community/flash-attn")]
    ['varlen', 'sdpa', None]
    """
    if attn_implementation in CONTAUDIO_ATTN:
        return attn_implementation
    mapped = ATTN_FROM_HF.get(attn_implementation)  # hub kernels ("org/repo") and others: the default
    log.info("attn_implementation=%r (a transformers name) runs contaudio's %r kernel", attn_implementation, mapped)
    return mapped


def cuda_missing(device: str | torch.device) -> bool:
    """Whether ``device`` names CUDA on a machine without it (a CPU-only length-stats node)."""
    try:
        return torch.device(device).type == "cuda" and not torch.cuda.is_available()
    except (RuntimeError, TypeError):
        return False  # a malformed name: contaudio's own check says what is wrong


_ESPNET_ABS_IO = espnet_abs_io()
_BASES: tuple[type, ...] = (_ContinuousAudioIO,) if _ESPNET_ABS_IO is None else (_ContinuousAudioIO, _ESPNET_ABS_IO)


class ContinuousAudioIO(*_BASES):  # type: ignore[misc]
    """contaudio's ``ContinuousAudioIO`` as ESPnet's: ``frontend="espnet"``, ``model.audio_tower.*`` names.

    Also an ESPnet ``AbsIO`` when ESPnet is importable: ESPnet's ``AbsIO.__init__(modality,
    is_discrete)`` runs first, then contaudio's constructor with the YAML's keyword arguments.
    """

    tower_path = ESPNET_TOWER_PATH
    keep_dropped_weights = True

    def __init__(
        self,
        encoder_choice: str = "huggingface",
        encoder_hf_model_tag: str = "Qwen/Qwen2.5-Omni-7B",
        attn_implementation: str | None = None,
        dtype: str = "bfloat16",
        device: str = "cpu",
        *,
        frontend: Frontend = "espnet",
        **kwargs: Any,
    ) -> None:
        if _ESPNET_ABS_IO is not None:
            _ESPNET_ABS_IO.__init__(self, modality=MODALITY, is_discrete=False)
        if cuda_missing(device):
            log.warning(
                "device=%r but CUDA is not available here: no encoder is built (preprocess/find_length work, "
                "as a length-stats node needs; encode_batch/dummy_forward raise)",
                device,
            )
            device, kwargs["skip_init_encoder"] = "cpu", True
        super().__init__(
            encoder_choice,
            encoder_hf_model_tag,
            contaudio_attention(attn_implementation),
            dtype,
            device,
            frontend=frontend,
            **kwargs,
        )

    # ESPnet's AbsIO raises NotImplementedError for what a continuous modality has not (contaudio's base returns None)
    def num_stream(self) -> int | None:
        return _espnet_abs_io_method("num_stream", self)

    def get_vocabulary(self) -> list[str] | None:
        return _espnet_abs_io_method("get_vocabulary", self)

    def get_stream_interval(self) -> list[tuple[int, int]] | None:
        return _espnet_abs_io_method("get_stream_interval", self)

    def get_stream_weight(self) -> list[float] | None:
        return _espnet_abs_io_method("get_stream_weight", self)


def _espnet_abs_io_method(name: str, io: ContinuousAudioIO) -> Any:
    """ESPnet's ``AbsIO.<name>`` on ``io`` (it raises NotImplementedError); contaudio's answer without ESPnet."""
    owner = _ESPNET_ABS_IO if _ESPNET_ABS_IO is not None else _ContinuousAudioIO
    return getattr(owner, name)(io)


def register(io_map: dict[str, type] | None = None) -> dict[str, type]:
    """Point ESPnet's ``continuous_audio`` IO at contaudio's class in this process; returns the map it changed.

    A process ESPnet spawns builds its job again without this registration: run ESPnet's scripts through
    ``python -m contaudio.integrations.espnet <module> ...`` so every process registers.
    ``io_map``: the job's name -> class map; found in ESPnet's job module when omitted.
    Raises ImportError with the fix when ESPnet's SpeechLM is not installed.
    """
    if io_map is None:
        module = import_first((ESPNET_JOB_MODULE,))
        io_map = getattr(module, ESPNET_JOB_IO_MAP, None) if module else None
        if not isinstance(io_map, dict):
            raise ImportError(
                f"ESPnet's SpeechLM job ({ESPNET_JOB_MODULE}.{ESPNET_JOB_IO_MAP}) was not found; install ESPnet "
                "with SpeechLM (pip install 'espnet[speechlm]==202611'), or pass the job's multimodal-IO map: "
                "register(io_map)"
            )
    io_map[CONFIG_NAME] = ContinuousAudioIO
    log.info("ESPnet's %r multimodal IO is now contaudio's ContinuousAudioIO", CONFIG_NAME)
    return io_map
