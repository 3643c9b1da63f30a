"""Manifests in: Lhotse cuts/recordings, Kaldi ``wav.scp`` (+ ``segments``), JSONL ``{id, path[, start, end]}``, globs.

Every reader returns the same thing: a list of :class:`Clip` in manifest order. A malformed
manifest (a line that is not JSON, a missing field, a duplicate id) raises :class:`ManifestError`
naming the file and line and how to fix it: nothing runs on a manifest that is wrong. A clip the
manifest describes but contaudio cannot read (a Lhotse URL source, a mixed cut, a Kaldi pipe
command without ``allow_pipes``) is kept with its ``problem`` set: it goes to ``errors.jsonl`` and
the job goes on. Relative audio paths are taken relative to the working directory, as Kaldi and Lhotse do.

Pipes: a ``wav.scp`` entry ``<id> <command> |`` (and a Lhotse ``command`` source) is a shell command
whose stdout is the audio. It runs only with ``allow_pipes=True`` (``--allow-pipes``): the clip's
``path`` is then the command and ``pipe`` is set; :func:`audio_source` runs it (``sh -c``) and hands
its stdout to soundfile. A command that fails (non-zero exit, no output) raises :class:`PipeError`:
that clip is recorded in ``errors.jsonl`` and the job goes on.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contaudio.extract.shards import encodes

ManifestFormat = Literal["auto", "lhotse", "kaldi", "jsonl", "glob"]
MANIFEST_FORMATS: tuple[str, ...] = ("auto", "lhotse", "kaldi", "jsonl", "glob")
KALDI_WAV_SCP = "wav.scp"
KALDI_SEGMENTS = "segments"
KALDI_WHOLE_FILE_END = -1.0  # a segments end time of -1 means "to the end of the recording"
GLOB_CHARS = frozenset("*?[")
# extensions a directory input picks up (libsndfile's formats; soundfile.available_formats() on a typical build)
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64"})
KALDI_PIPE = "|"  # a wav.scp entry ending in this is a shell command writing the audio to stdout
PIPES_FLAG = "--allow-pipes (extract.allow_pipes=true)"  # what lets pipe entries run, named in the refusal
PIPE_TIMEOUT_S = 600.0  # a pipe command still running after this is killed and its clip recorded as failed
PIPE_STDERR_CHARS = 300  # the tail of a failed command's stderr kept in its error message


class ManifestError(ValueError):
    """A manifest that cannot be read as it is (the message names the file, the line and the fix)."""


class PipeError(OSError):
    """A pipe command that gave no audio (non-zero exit, timeout, empty stdout): that clip fails, the job goes on."""


@dataclass(frozen=True)
class Clip:
    """One clip of a manifest: ``path`` from ``start_s`` for ``duration_s`` seconds (None: to the file's end).

    channels: which channels of the file to read (None: all, downmixed by the audio policy);
    where: the manifest line that named it (for error messages); problem: why contaudio cannot
    read it, when the manifest alone says so (the clip is reported, never read); pipe: ``path`` is
    a shell command writing the audio to stdout (read through :func:`audio_source`).
    """

    id: str
    path: str
    start_s: float = 0.0
    duration_s: float | None = None
    channels: tuple[int, ...] | None = None
    where: str = ""
    problem: str | None = None
    pipe: bool = False


def read_manifest(
    source: str | Path,
    fmt: ManifestFormat = "auto",
    segments: str | Path | None = None,
    *,
    allow_pipes: bool = False,
) -> list[Clip]:
    """Read any supported manifest into clips (manifest order); see :func:`detect_format` for ``auto``.

    segments: a Kaldi ``segments`` file for a ``wav.scp`` input (default: the ``segments`` file
    beside it, when there is one). allow_pipes: run the shell commands of pipe entries (``<id> cmd |``
    in ``wav.scp``, Lhotse ``command`` sources); without it each such clip fails, naming the flag.
    """
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in MANIFEST_FORMATS:
        raise ManifestError(f"unknown manifest format {fmt!r}; use one of {', '.join(MANIFEST_FORMATS)}")
    if fmt == "glob":
        clips = clips_from_glob(str(source))
    elif not Path(source).exists():
        raise ManifestError(
            f"manifest {source} does not exist; pass a Lhotse .jsonl.gz, a wav.scp, a JSONL, a folder or a glob"
        )
    elif fmt == "lhotse":
        clips = clips_from_lhotse(Path(source), allow_pipes)
    elif fmt == "kaldi":
        clips = clips_from_kaldi(*kaldi_files(Path(source), segments), allow_pipes=allow_pipes)
    else:
        clips = clips_from_jsonl(Path(source))
    if not clips:
        raise ManifestError(f"{source} lists no clips: nothing to extract")
    check_ids(clips, str(source))
    return clips


def detect_format(source: str | Path) -> str:
    """The manifest format a path names.

    A folder holding ``wav.scp`` or a ``*.scp`` file: Kaldi; ``*.jsonl.gz`` / ``*.json.gz``: Lhotse;
    ``*.jsonl`` / ``*.json``: contaudio's JSONL; any other folder, a pattern with ``*?[`` or one audio file: a glob.

    >>> detect_format("data/train/wav.scp"), detect_format("cuts_train.jsonl.gz"), detect_format("clips.jsonl")
    ('kaldi', 'lhotse', 'jsonl')
    >>> detect_format("corpus/**/*.flac")
    'glob'
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return "kaldi" if (path / KALDI_WAV_SCP).is_file() else "glob"
    if path.suffix == ".scp":
        return "kaldi"
    if text.endswith((".jsonl.gz", ".json.gz")):
        return "lhotse"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if GLOB_CHARS & set(text) or path.suffix.lower() in AUDIO_EXTENSIONS:  # a pattern, or one audio file
        return "glob"
    if not path.exists():
        raise ManifestError(f"{text} does not exist: pass a manifest, a data folder, an audio folder or a glob")
    raise ManifestError(
        f"cannot tell the manifest format of {text!r}: name a Lhotse *.jsonl.gz, a Kaldi wav.scp (or its data "
        "folder), a *.jsonl of {id, path[, start, end]}, a folder, a glob pattern or an audio file, or set the "
        "format explicitly"
    )


def check_ids(clips: list[Clip], source: str) -> None:
    """Raise when an id cannot be written as text (a lone surrogate: a file name that is not UTF-8, or ``"\\ud800"``
    in JSON; a NUL) or two clips share one (their outputs would overwrite each other)."""
    unwritable = [clip for clip in clips if "\0" in clip.id or not encodes(clip.id)]
    if unwritable:
        shown = ", ".join(f"{c.id!a} ({c.where}: {c.path!a})" for c in unwritable[:6])
        raise ManifestError(
            f"{source}: {len(unwritable)} clip id(s) cannot be written as UTF-8 text: {shown}; rename the files (for "
            "a folder or glob the id is the file's path) or give every clip an id in a JSONL manifest"
        )
    counts = Counter(clip.id for clip in clips)
    duplicates = [clip for clip in clips if counts[clip.id] > 1]
    if duplicates:
        shown = ", ".join(f"{c.id!r} ({c.where})" for c in duplicates[:6])
        raise ManifestError(
            f"{source}: {len(duplicates)} clips share an id with another: {shown}; every clip needs a unique id "
            "(for a folder input the id is the path without its extension: a.wav beside a.flac clash)"
        )


# ----------------------------------------------------------------------------- JSONL


def parse_jsonl_clip(line: str, where: str) -> Clip:
    """One line ``{"id": ..., "path": ..., "start": s, "end": s}`` (``duration`` instead of ``end``; ``channel``)."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err.msg}): {line[:80]!r}") from err
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: expected an object {{id, path[, start, end]}}, got {type(item).__name__}")
    missing = [key for key in ("id", "path") if key not in item]
    if missing:
        raise ManifestError(f"{where}: missing {' and '.join(missing)}; each line needs id and path: {line[:80]!r}")
    if not isinstance(item["id"], str):
        raise ManifestError(f"{where}: id must be a string, got {type(item['id']).__name__} {item['id']!r}: quote it")
    start = _seconds(item.get("start", 0.0), "start", where)
    duration = None
    if item.get("end") is not None:
        duration = _seconds(item["end"], "end", where) - start
    elif item.get("duration") is not None:
        duration = _seconds(item["duration"], "duration", where)
    if duration is not None and duration <= 0:
        raise ManifestError(f"{where}: the segment has no length (start {start} s, duration {duration:g} s)")
    channel = item.get("channel")
    channels = None if channel is None else tuple(channel) if isinstance(channel, list) else (int(channel),)
    return Clip(item["id"], str(item["path"]), start, duration, channels, where)


def clips_from_jsonl(path: Path) -> list[Clip]:
    return [parse_jsonl_clip(line, where) for line, where in _lines(path)]


# ----------------------------------------------------------------------------- Kaldi


def kaldi_files(source: Path, segments: str | Path | None) -> tuple[Path, Path | None]:
    """``(wav.scp, segments or None)`` for a Kaldi data folder or a ``wav.scp`` path."""
    scp = source / KALDI_WAV_SCP if source.is_dir() else source
    if segments is not None:
        if not Path(segments).is_file():
            raise ManifestError(f"segments file {segments} does not exist")
        return scp, Path(segments)
    beside = scp.parent / KALDI_SEGMENTS
    return scp, beside if beside.is_file() else None


def is_pipe(target: str) -> bool:
    """Whether a ``wav.scp`` target is a shell command (Kaldi's ``cmd args |``).

    >>> is_pipe("sox a.flac -t wav - |"), is_pipe("a.wav")
    (True, False)
    """
    return target.rstrip().endswith(KALDI_PIPE)


def parse_wav_scp_line(line: str, where: str, allow_pipes: bool = False) -> tuple[str, str, str | None]:
    """``"<recording-id> <path>"`` -> ``(id, path, problem)``; an ark offset is a problem, and so is a pipe
    command unless ``allow_pipes``."""
    parts = line.split(maxsplit=1)
    if len(parts) != 2:
        raise ManifestError(f"{where}: expected '<recording-id> <path>', got {line!r}")
    rec_id, target = parts[0], parts[1].strip()
    problem = None
    if is_pipe(target):
        if not allow_pipes:
            problem = (f"wav.scp entry is a shell command (ends in '|'): run with {PIPES_FLAG} to run it (it runs "
                       "that command in a shell), or write the audio to files first")  # fmt: skip
    elif target.startswith("ark:") or (":" in target and target.rsplit(":", 1)[1].isdigit()):
        problem = "wav.scp entry is an ark offset (path:offset); contaudio reads audio files only"
    return rec_id, target, problem


def clips_from_kaldi(scp: Path, segments: Path | None, *, allow_pipes: bool = False) -> list[Clip]:
    """wav.scp alone: one clip per recording; with segments: one clip per segment of a listed recording
    (a pipe recording's command runs once per segment)."""
    recordings: dict[str, Clip] = {}
    for line, where in _lines(scp):
        rec_id, path, problem = parse_wav_scp_line(line, where, allow_pipes)
        if rec_id in recordings:
            raise ManifestError(f"{where}: recording id {rec_id!r} is listed twice in {scp.name}")
        recordings[rec_id] = Clip(rec_id, path, where=where, problem=problem, pipe=problem is None and is_pipe(path))
    if segments is None:
        return list(recordings.values())
    clips = []
    for line, where in _lines(segments):
        parts = line.split()
        if len(parts) != 4:
            raise ManifestError(f"{where}: expected '<utt-id> <recording-id> <start> <end>', got {line!r}")
        utt_id, rec_id = parts[0], parts[1]
        start = _seconds(parts[2], "start", where)
        end = _seconds(parts[3], "end", where, allow_to_end=True)
        if rec_id not in recordings:
            clips.append(Clip(utt_id, "", where=where, problem=f"recording {rec_id!r} is not in {scp}"))
            continue
        duration = None if end == KALDI_WHOLE_FILE_END else end - start
        if duration is not None and duration <= 0:
            raise ManifestError(f"{where}: segment {utt_id!r} ends ({end} s) before it starts ({start} s)")
        recording = recordings[rec_id]
        clips.append(Clip(utt_id, recording.path, start, duration, None, where, recording.problem, recording.pipe))
    return clips


# ----------------------------------------------------------------------------- Lhotse


def clips_from_lhotse(path: Path, allow_pipes: bool = False) -> list[Clip]:
    """A Lhotse ``CutSet`` (one clip per cut) or ``RecordingSet`` (one per recording), via lhotse itself."""
    try:
        import lhotse
    except ImportError as err:
        raise ManifestError(
            f"{path} is a Lhotse manifest, but lhotse is not installed: pip install 'contaudio[lhotse]'"
        ) from err
    try:
        manifest = lhotse.load_manifest_lazy(path) or lhotse.load_manifest(path)
    except Exception as err:
        raise ManifestError(f"lhotse could not read {path} ({type(err).__name__}: {err})") from err
    if isinstance(manifest, lhotse.RecordingSet):
        return [clip_from_recording(rec, rec.id, 0.0, None, None, f"{path}", allow_pipes) for rec in manifest]
    if isinstance(manifest, lhotse.CutSet):
        return [clip_from_cut(cut, f"{path}", allow_pipes) for cut in manifest]
    raise ManifestError(f"{path} holds a Lhotse {type(manifest).__name__}; pass a CutSet or a RecordingSet")


def clip_from_cut(cut: Any, where: str, allow_pipes: bool = False) -> Clip:
    recording = getattr(cut, "recording", None)
    if recording is None or not getattr(cut, "has_recording", True):
        kind = type(cut).__name__
        return Clip(cut.id, "", where=where, problem=f"Lhotse {kind} without a single recording (mixed or padding "
                                                     "cuts are not read); pass the cuts before mixing")  # fmt: skip
    channel = getattr(cut, "channel", None)
    channels = None if channel is None else tuple(channel) if isinstance(channel, list) else (int(channel),)
    return clip_from_recording(recording, cut.id, float(cut.start), float(cut.duration), channels, where, allow_pipes)


def clip_from_recording(
    recording: Any,
    clip_id: str,
    start_s: float,
    duration_s: float | None,
    channels: tuple[int, ...] | None,
    where: str,
    allow_pipes: bool = False,
) -> Clip:
    """A clip of a Lhotse recording with a single ``file`` source (or ``command`` source, with ``allow_pipes``) and
    no transforms; else a clip with a problem."""
    sources = recording.sources
    problem = None
    pipe = len(sources) == 1 and sources[0].type == "command"
    if len(sources) != 1:
        problem = f"recording {recording.id!r} has {len(sources)} sources (one file per channel); contaudio reads one"
    elif pipe and not allow_pipes:
        problem = (f"recording {recording.id!r} has a 'command' source (a shell command): run with {PIPES_FLAG} to "
                   "run it, or write the audio to files first")  # fmt: skip
    elif sources[0].type not in ("file", "command"):
        problem = f"recording {recording.id!r} has a {sources[0].type!r} source; contaudio reads local files only"
    elif getattr(recording, "transforms", None):
        problem = f"recording {recording.id!r} has transforms (speed/volume/resample) that contaudio does not apply"
    path = str(sources[0].source) if len(sources) == 1 else ""
    if problem is None and channels is not None and list(channels) == list(sources[0].channels):
        channels = None  # every channel of the file: no selection
    return Clip(clip_id, path, start_s, duration_s, channels, where, problem, pipe and problem is None)


# ----------------------------------------------------------------------------- pipes


def run_pipe(command: str, timeout_s: float = PIPE_TIMEOUT_S) -> bytes:
    """Run a pipe entry's shell command (a trailing ``|`` dropped) and return its stdout; raise :class:`PipeError`
    when it exits non-zero, times out or writes nothing (with the tail of its stderr)."""
    shell = command.rstrip().removesuffix(KALDI_PIPE).rstrip()
    try:
        done = subprocess.run(shell, shell=True, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise PipeError(f"pipe command {shell!r} still ran after {timeout_s:g} s: killed") from err
    if done.returncode != 0 or not done.stdout:
        stderr = done.stderr.decode(errors="replace").strip()[-PIPE_STDERR_CHARS:]
        what = f"exited with status {done.returncode}" if done.returncode else "wrote no audio to stdout"
        raise PipeError(f"pipe command {shell!r} {what}{': ' + stderr if stderr else ''}")
    return done.stdout


def audio_source(clip: Clip) -> str | io.BytesIO:
    """What soundfile opens for ``clip``: its path, or for a pipe clip its command's stdout (the command runs now).

    Raises :class:`PipeError` (an ``OSError``: a clip error) when the command gives no audio.
    """
    return io.BytesIO(run_pipe(clip.path)) if clip.pipe else clip.path


# ----------------------------------------------------------------------------- glob


def clips_from_glob(pattern: str) -> list[Clip]:
    """Every audio file under a folder (or matching a glob pattern), id = its relative path without extension."""
    path = Path(pattern)
    if path.is_dir():
        root, files = path, [p for p in sorted(path.rglob("*")) if p.suffix.lower() in AUDIO_EXTENSIONS]
    elif path.is_file() and not GLOB_CHARS & set(pattern):  # one file named, no wildcard
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            raise ManifestError(
                f"{pattern} is a file, neither audio ({', '.join(sorted(AUDIO_EXTENSIONS))}) nor a pattern; a list "
                "of paths is a Kaldi wav.scp ('<id> <path>' per line: --format kaldi) or a JSONL of {id, path}"
            )
        root, files = path.parent, [path]
    else:
        root = glob_root(pattern)
        files = [
            Path(p)
            for p in sorted(glob.glob(pattern, recursive=True))
            if os.path.isfile(p) and Path(p).suffix.lower() in AUDIO_EXTENSIONS
        ]  # as for a folder
    if not files:
        raise ManifestError(f"no audio files match {pattern!r} (extensions {', '.join(sorted(AUDIO_EXTENSIONS))})")
    return [Clip(file.relative_to(root).with_suffix("").as_posix(), str(file), where=pattern) for file in files]


def glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard.

    >>> glob_root("corpus/train/**/*.flac").as_posix(), glob_root("*.wav").as_posix()
    ('corpus/train', '.')
    """
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if GLOB_CHARS & set(p)), len(parts))]
    return Path(*fixed) if fixed else Path(".")


# ----------------------------------------------------------------------------- helpers


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """Non-empty lines of a text file (gzip when ``*.gz``) with ``"file:line"`` for messages."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            yield from _numbered(handle, path)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path} is not UTF-8 text ({err}); is it really a manifest?") from err


def _numbered(lines: Iterable[str], path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield line.strip(), f"{path}:{number}"


def _seconds(value: Any, name: str, where: str, allow_to_end: bool = False) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError) as err:
        raise ManifestError(f"{where}: {name} must be a number of seconds, got {value!r}") from err
    if seconds < 0 and not (allow_to_end and seconds == KALDI_WHOLE_FILE_END):
        raise ManifestError(f"{where}: {name} must be >= 0 seconds, got {value!r}")
    return seconds
