"""ESPnet's length stats (``bin/prepare_length_stats.py``), exactly, from file headers.

ESPnet writes ``<out>/stats_<task>_<name>.jsonl``, one ``{"<example_id>": count}`` per line, where ``count =
preprocessor.find_length((task, name, id), data_dict) = 1 + sum(3 + io.find_length(message))`` over the task
template's messages, ``data_dict`` holding every entry of the data json as ESPnet's readers return it. Its script
decodes every clip for that. Here the same numbers come from ESPnet's own code on the same inputs, except that
an audio entry's waveform is a zero-cost stand-in of the shape ESPnet's reader would return: so the counts are
ESPnet's by construction, and only headers are read.

* The job and its preprocessor: ESPnet's, built from the train YAML (``is_train=True``, as ESPnet's script) with
  contaudio's ``ContinuousAudioIO`` registered; its encoder weights are not built (``skip_init_encoder``), since
  ``find_length`` reads only a waveform's shape and rate.
* The data: ESPnet's ``SingleDataset`` reads the data json and builds ESPnet's readers. Text (and every
  non-audio) entry is read by its reader. A ``kaldi_audio`` entry that is a plain audio file is read from its
  header (``soundfile.info``): ``KaldiAudioReader`` returns ``[1, N]`` for a mono file and soundfile's ``[N, C]``
  for C > 1 channels, so the stand-in is ``np.broadcast_to(zeros, that shape)`` at the file's rate. Other audio
  entries (ark offsets, pipes, Lhotse, OmniIO) are read by ESPnet's reader itself: exact, at decoding cost.
* Order: the data json's sample order, which is ESPnet's with ``--num-workers 1`` (with W workers ESPnet writes
  rank 0's samples ``[0::W]`` first, then rank 1's, ...: the same lines in another order).
* A sample that cannot be read (a missing or corrupt file, ``find_length`` refusing it) makes
  ESPnet's script fail; here :class:`UnreadableSamples` lists them all and nothing is written. With
  ``drop_unreadable`` they are left out instead, and ``<out>/data_<task>_<name>.json`` (the data json without them)
  is written beside the stats, for the training specifier: ESPnet's batching raises KeyError on an id without stats.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import yaml

log = logging.getLogger(__name__)

ESPNET_MISSING = (
    "ESPnet's SpeechLM is not importable here, and its stats are computed by ESPnet's own code: "
    "run this in ESPnet's environment (pip install 'espnet[speechlm]==202611'; `make espnet-env` builds one)"
)
UNKNOWN_FRAMES = 2**62  # libsndfile reports SF_COUNT_MAX frames for streams without a length in the header
SHOWN_IDS = 20  # ids named in an error message


class EspnetMissing(ImportError):
    """ESPnet's SpeechLM cannot be imported in this environment."""


class UnreadableSamples(RuntimeError):
    """Samples whose entries cannot be read; ``errors`` maps each id to why."""

    def __init__(self, spec: str, errors: dict[str, str]) -> None:
        shown = ", ".join(f"{key} ({why})" for key, why in list(errors.items())[:SHOWN_IDS])
        more = f" and {len(errors) - SHOWN_IDS} more" if len(errors) > SHOWN_IDS else ""
        super().__init__(
            f"{len(errors)} sample(s) of {spec} cannot be read, so ESPnet's own length stats would fail too: "
            f"{shown}{more}. Fix or remove them, or pass --espnet-drop-unreadable to write a data json without them"
        )
        self.errors = errors


@dataclass(frozen=True)
class Specifier:
    """ESPnet's unregistered data specifier ``task:name:data_json[:factor]`` (the factor is not used by stats)."""

    task: str
    name: str
    data_json: Path

    @classmethod
    def parse(cls, text: str) -> Specifier:
        """Parse with ESPnet's own parser (its errors say the expected format)."""
        from espnet2.speechlm.dataloader.iterator import _parse_data_specifier

        [(task, name, data_json, _factor)], _ = _parse_data_specifier([text], [])
        return cls(task, name, Path(data_json))

    @property
    def stats_name(self) -> str:
        """ESPnet's file name: ``stats_<task>_<name>.jsonl``."""
        return f"stats_{self.task}_{self.name}.jsonl"


@dataclass
class StatsResult:
    """What one specifier produced: the stats file, its counts, and the samples dropped (id -> why)."""

    spec: Specifier
    path: Path
    stats: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    data_json: Path | None = None
    skipped: bool = False


def require_espnet() -> None:
    """Raise :class:`EspnetMissing` (with the fix) when ESPnet's SpeechLM cannot be imported."""
    try:
        import espnet2.speechlm.model  # noqa: F401
    except ImportError as error:
        raise EspnetMissing(f"{ESPNET_MISSING} ({error})") from error


@contextlib.contextmanager
def contaudio_registered() -> Iterator[dict[str, type]]:
    """ESPnet's IO map with contaudio's class registered, restored on exit (the caller's process is left as it was)."""
    from espnet2.speechlm.model.speechlm.speechlm_job import _multimodal_ios as io_map

    from contaudio.integrations.espnet import register

    before = dict(io_map)
    register(io_map)
    try:
        yield io_map
    finally:
        io_map.clear()
        io_map.update(before)


def accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (named, or through ``**kwargs``)."""
    parameters = inspect.signature(cls).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def build_preprocessor(config: dict[str, Any], io_map: dict[str, type]) -> Any:
    """ESPnet's job (``is_train=True``, as its script) and preprocessor; contaudio's IOs get ``skip_init_encoder``."""
    from espnet2.speechlm.model import _all_job_types

    from contaudio.integrations.espnet import ContinuousAudioIO

    config = {**config, "multimodal_io": dict(config["multimodal_io"])}
    for name, kwargs in config["multimodal_io"].items():
        cls = io_map.get(name)
        if cls is not None and issubclass(cls, ContinuousAudioIO) and accepts(cls, "skip_init_encoder"):
            config["multimodal_io"][name] = {**kwargs, "skip_init_encoder": True}
    return _all_job_types[config["job_type"]](config, is_train=True).build_preprocessor()


def kaldi_header_stand_in(reader: Any, sample_id: str) -> tuple[np.ndarray, int] | None:
    """``(stand-in waveform, rate)`` of a ``kaldi_audio`` entry that is a plain audio file; None for others.

    The stand-in has the shape ``KaldiAudioReader`` returns (``[1, N]`` mono, ``[N, C]`` for C > 1) and no samples.
    Raises ``OSError``/``RuntimeError`` when the file cannot be read.
    """
    from omniio.tools.kaldi.matio import parse_extended_filename

    path, offset = parse_extended_filename(reader.index[sample_id])
    if offset is not None or not isinstance(path, str) or path.rstrip().endswith("|"):
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    info = soundfile.info(path)
    if not 0 < info.frames < UNKNOWN_FRAMES:
        return None  # no length in the header: ESPnet's reader decodes it
    shape = (1, info.frames) if info.channels == 1 else (info.frames, info.channels)
    return np.broadcast_to(np.zeros((), np.float32), shape), int(info.samplerate)


def entry_reader(reader: Any) -> Callable[[str], Any]:
    """``sample_id -> value`` of one data entry: a header stand-in where possible, else ESPnet's reader."""
    from espnet2.speechlm.dataloader.multimodal_loader.audio_loader import KaldiAudioReader

    if not isinstance(reader, KaldiAudioReader):
        return reader.__getitem__

    def read(sample_id: str) -> Any:
        stand_in = kaldi_header_stand_in(reader, sample_id)
        return reader[sample_id] if stand_in is None else stand_in

    return read


def sample_counts(spec: Specifier, preprocessor: Any) -> tuple[dict[str, int], dict[str, str]]:
    """``({id: count}, {id: why unreadable})`` over the data json's samples, in its order."""
    from espnet2.speechlm.dataloader.dataset import SingleDataset
    from espnet2.speechlm.dataloader.task_conf import TASK_CONFIGS

    dataset = SingleDataset(str(spec.data_json))
    missing = [e for e in TASK_CONFIGS[spec.task]["required_entries"] if e not in dataset.entries]
    if missing:
        raise ValueError(f"task {spec.task} needs the entries {missing}, which {spec.data_json} does not have")
    readers = {name: entry_reader(reader) for name, reader in dataset.readers.items()}
    stats, errors = {}, {}
    for sample_id in dataset.sample_ids:
        try:
            data = {name: read(sample_id) for name, read in readers.items()}
            stats[sample_id] = int(preprocessor.find_length((spec.task, spec.name, sample_id), data))
        except Exception as error:  # any failure of a sample is reported with its id
            errors[sample_id] = f"{type(error).__name__}: {error}"
    return stats, errors


def write_jsonl(path: Path, stats: dict[str, int]) -> None:
    """ESPnet's stats lines, ``{"<id>": count}``, via a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps({key: value}) + "\n" for key, value in stats.items()))
    tmp.replace(path)


def write_filtered_json(spec: Specifier, keep: dict[str, int], out: Path) -> Path:
    """``<out>/data_<task>_<name>.json``: the data json with only the samples in ``keep``."""
    data = json.loads(spec.data_json.read_text(encoding="utf-8"))
    data["samples"] = [sample for sample in data["samples"] if sample in keep]
    path = out / f"data_{spec.task}_{spec.name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def espnet_stats(
    train_config: Path, specifiers: list[str], out: Path, drop_unreadable: bool = False
) -> list[StatsResult]:
    """Write ESPnet's ``stats_<task>_<name>.jsonl`` for each specifier into ``out`` (see the module doc).

    An existing stats file is kept, as ESPnet's script does. Raises :class:`EspnetMissing` without ESPnet and
    :class:`UnreadableSamples` (nothing written for that specifier) unless ``drop_unreadable``.
    """
    require_espnet()
    specs = [Specifier.parse(text) for text in specifiers]
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(train_config).read_text())
    results = []
    with contaudio_registered() as io_map:
        preprocessor = build_preprocessor(config, io_map)
        for spec in specs:
            result = StatsResult(spec, out / spec.stats_name)
            if result.path.exists():
                log.info("%s exists: kept (delete it to recount)", result.path)
                results.append(StatsResult(spec, result.path, skipped=True))
                continue
            result.stats, result.dropped = sample_counts(spec, preprocessor)
            if result.dropped and not drop_unreadable:
                raise UnreadableSamples(f"{spec.task}:{spec.name}:{spec.data_json}", result.dropped)
            if result.dropped:
                result.data_json = write_filtered_json(spec, result.stats, out)
                log.warning("%d unreadable sample(s) of %s:%s left out (%s); train on %s:%s:%s", len(result.dropped),
                            spec.task, spec.name, ", ".join(list(result.dropped)[:SHOWN_IDS]), spec.task, spec.name,
                            result.data_json)  # fmt: skip
            write_jsonl(result.path, result.stats)
            log.info("wrote %s: %d samples, %d tokens", result.path, len(result.stats), sum(result.stats.values()))
            results.append(result)
    return results
