"""Feature shards on disk: names, atomic writes, the writer thread, the index, and the output folder's config.

A shard is one safetensors file holding one ``[rows, D]`` tensor per clip and, in its header
metadata, the index entries of those clips (id -> generated tensor key: an id is data, never a key,
so no id can collide with the format's reserved names) and the clips of its plan that could not be
decoded. It is written under a temporary name with the umask's permissions, fsynced, then renamed:
a shard that is visible is complete, and its entries travel with it, so the shards alone are the
truth. Its bytes depend only on its contents (sorted header keys, tensors in key order).
``index.jsonl`` (one entry per clip: id, shard, key, rows, D, dtype, encoder tag, contaudio
version, config hash) is rebuilt from their headers at the end of a run and by :func:`write_index`
(the merge step after many ranks).

``meta.json`` records the configuration hashes of what the folder holds and the current plan's
world size; a run with another configuration refuses to add to it unless told to (``overwrite`` or
``allow_mixed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

log = logging.getLogger(__name__)

FORMAT = "contaudio.features/1"
INDEX_FILE = "index.jsonl"
META_FILE = "meta.json"
INDEX_KEY = "contaudio.index"  # safetensors header metadata key holding the shard's index entries (JSON)
FAILED_KEY = "contaudio.failed"  # ... and the error records of its planned clips that could not be decoded
TENSOR_KEY = "c{:06d}"  # a clip's tensor key: its position in the shard (ids live in the entries only)
# safetensors' dtype names of the dtypes features are stored in
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
HEADER_ALIGN = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes
FILE_MODE = 0o666  # new files: read-write for all, less the umask (as open() creates the other outputs)
SHARD_PATTERN = re.compile(r"^shard-r(\d{4,})-(\d{6,})\.safetensors$")
SHARD_GLOB = "shard-r*-*.safetensors"
TEMP_PREFIX = "."  # shards in progress are hidden: .shard-r0000-000003.safetensors.tmp-<pid>
# files a run writes into its output folder (what overwrite=true removes; nothing else is touched)
OWN_PATTERNS = (SHARD_GLOB, f"{TEMP_PREFIX}shard-r*.tmp-*", INDEX_FILE, META_FILE, "errors*.jsonl", "summary*.json",
                "lengths*.jsonl", "cuts.jsonl.gz", "feats.scp", "feats_shape", "feats_stats.npz")  # fmt: skip


class RefusedError(ValueError):
    """An output folder (or a command) this run cannot use as it is; the message says how to fix it."""


class OutputMismatchError(RefusedError):
    """The output folder holds features made with another configuration."""


def shard_name(rank: int, seq: int) -> str:
    """``shard-r<rank>-<seq>.safetensors``.

    >>> shard_name(3, 12)
    'shard-r0003-000012.safetensors'
    """
    return f"shard-r{rank:04d}-{seq:06d}.safetensors"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(rank, seq)`` of a shard file name, None for any other name.

    >>> parse_shard_name("shard-r0003-000012.safetensors"), parse_shard_name(".shard-r0003-000012.safetensors.tmp-9")
    ((3, 12), None)
    """
    match = SHARD_PATTERN.match(name)
    return (int(match[1]), int(match[2])) if match else None


def next_seq(names: Iterable[str], rank: int) -> int:
    """The first shard number after every finished shard of ``rank``.

    >>> next_seq(["shard-r0000-000000.safetensors", "shard-r0001-000004.safetensors", "index.jsonl"], 1)
    5
    """
    seqs = [parsed[1] for name in names if (parsed := parse_shard_name(name)) and parsed[0] == rank]
    return max(seqs, default=-1) + 1


def part_suffix(rank: int, world_size: int) -> str:
    """File-name suffix of one rank's lengths/errors/summary files (none for a single process).

    >>> part_suffix(0, 1), part_suffix(2, 8)
    ('', '-r0002-of-0008')
    """
    return "" if world_size == 1 else f"-r{rank:04d}-of-{world_size:04d}"


def config_hash(config: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys).

    >>> config_hash({"b": 1, "a": "x"}) == config_hash({"a": "x", "b": 1}) != config_hash({"a": "y", "b": 1})
    True
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- atomic files


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's: its entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: Path, final: Path) -> None:
    """fsync ``temporary``, rename it to ``final`` and fsync the folder: ``final`` is whole or absent."""
    fsync_path(temporary)
    os.replace(temporary, final)
    fsync_path(final.parent)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (encoded first: a failure leaves no file)."""
    data = text.encode("utf-8")
    temporary = path.with_name(f"{TEMP_PREFIX}{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    publish(temporary, path)
    return path


def json_line(record: Mapping[str, Any]) -> str:
    """One JSON line, non-ASCII text as it is; escaped where it is no valid UTF-8 (a path Python decoded from a name
    that is not: a lone surrogate), so the line can always be written.

    >>> json_line({"path": "é"}), json_line({"path": "x\\udcff.wav"})
    ('{"path": "é"}\\n', '{"path": "x\\\\udcff.wav"}\\n')
    """
    text = json.dumps(record, ensure_ascii=False)
    return (text if encodes(text) else json.dumps(record)) + "\n"


def encodes(text: str) -> bool:
    """Whether ``text`` is valid Unicode for UTF-8 (no lone surrogate).

    >>> encodes("utt-é"), encodes("x\\udcff")
    (True, False)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_jsonl_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    return write_text_atomic(path, "".join(json_line(r) for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------- shards


def safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[bytes, list[memoryview]]:
    """The header (length prefix + JSON) and the data blocks of a safetensors file, in key order.

    Every key is sorted (``safetensors.save_file`` writes its metadata in a random order), so the
    bytes depend only on the contents. The blocks are views of the tensors' memory (written without a copy).
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    blocks, offset = [], 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {key!r}: cannot store dtype {tensor.dtype} (one of {list(SAFETENSORS_DTYPES)})")
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        header[key] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        blocks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text, blocks


def write_shard(
    directory: Path,
    name: str,
    tensors: Mapping[str, torch.Tensor],
    entries: Sequence[dict],
    failed: Sequence[dict] = (),
) -> Path:
    """Write one shard atomically: tensors, their index entries (each naming its tensor ``key``) and the error
    records of the planned clips that failed, in the header. Created with ``0o666`` less the umask."""
    temporary = directory / f"{TEMP_PREFIX}{name}.tmp-{os.getpid()}"
    metadata = {"format": FORMAT, INDEX_KEY: json.dumps(list(entries), sort_keys=True),
                FAILED_KEY: json.dumps(list(failed), sort_keys=True)}  # fmt: skip
    header, blocks = safetensors_bytes(tensors, metadata)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(header)
        for block in blocks:
            handle.write(block)
    final = directory / name
    publish(temporary, final)
    return final


def finished_shards(directory: Path) -> list[Path]:
    """The complete shards in ``directory`` (temporary files are never listed), in name order."""
    return sorted(p for p in directory.glob(SHARD_GLOB) if parse_shard_name(p.name))


def shard_metadata(path: Path) -> dict[str, str]:
    """A contaudio shard's header metadata (no tensor data is read)."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # a file that is not a safetensors shard (safetensors raises several types)
        raise RefusedError(f"{path} is not a readable safetensors shard ({err}); delete it and rerun") from err
    if metadata.get("format") != FORMAT or INDEX_KEY not in metadata:
        raise RefusedError(f"{path} is not a contaudio feature shard (no {INDEX_KEY!r} in its header)")
    return metadata


def shard_entries(path: Path) -> list[dict[str, Any]]:
    """The index entries a shard's header holds (no tensor data is read), each with its ``shard`` name."""
    return [{**entry, "shard": path.name} for entry in json.loads(shard_metadata(path)[INDEX_KEY])]


def shard_failures(path: Path) -> list[dict[str, Any]]:
    """The error records of the clips a shard's plan held but could not decode (each with its ``shard`` name)."""
    return [{**record, "shard": path.name} for record in json.loads(shard_metadata(path).get(FAILED_KEY, "[]"))]


def done_ids(directory: Path, config: str | None = None) -> set[str]:
    """Ids of every clip in a finished shard of ``directory`` (any rank), of config hash ``config`` (None: any)."""
    return {entry["id"] for path in finished_shards(directory) for entry in shard_entries(path)
            if config is None or entry.get("config_hash") == config}  # fmt: skip


def failed_records(directory: Path, config: str) -> dict[str, dict[str, Any]]:
    """id -> error record of the clips that failed in a finished shard of config hash ``config`` and are not
    stored in any (a clip retried with success is no longer failed)."""
    records = {r["id"]: r for path in finished_shards(directory) for r in shard_failures(path)
               if r.get("config_hash") == config}  # fmt: skip
    stored = done_ids(directory, config) if records else set()
    return {clip_id: r for clip_id, r in records.items() if clip_id not in stored}


def remove_temporary(directory: Path, rank: int) -> int:
    """Delete the half-written shards a killed run of ``rank`` left behind; return how many."""
    stale = list(directory.glob(f"{TEMP_PREFIX}shard-r{rank:04d}-*.tmp-*"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished shard(s) of rank %d left by an earlier run", len(stale), rank)
    return len(stale)


def drop_duplicates(entries: Iterable[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """The entries of one folder (in shard order) without repeats of an ``(id, config_hash)``: the first stays.

    A repeat is the same clip encoded twice with the same configuration (e.g. by two runs that overlapped
    before runs took a lock): equal features, so the copy in the later shard is ignored, with a warning.
    """
    kept: dict[tuple[str, Any], dict[str, Any]] = {}
    ignored = []
    for entry in entries:
        key = (entry["id"], entry.get("config_hash"))
        if key in kept:
            ignored.append(f"{entry['id']!r} in {entry['shard']} (kept {kept[key]['shard']})")
        else:
            kept[key] = entry
    if ignored:
        log.warning("%s: %d clip(s) stored twice with one configuration; the later copies are ignored: %s%s", folder,
                    len(ignored), ", ".join(ignored[:5]), ", ..." if len(ignored) > 5 else "")  # fmt: skip
    return list(kept.values())


def write_index(folders: Sequence[Path], into: Path) -> Path:
    """Rebuild ``into/index.jsonl`` from the shard headers of ``folders`` (the merge step after many ranks).

    Each entry's ``shard`` is relative to ``into``, so a folder (or the tree of folders) can move.
    Within a folder a clip stored twice with one configuration is kept once (:func:`drop_duplicates`);
    an ``(id, config_hash)`` in two folders is refused.
    """
    into.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    seen: dict[tuple[str, Any], str] = {}
    for folder in folders:
        found = [e for path in finished_shards(folder) for e in shard_entries(path)]
        for entry in drop_duplicates(found, folder):
            relative = Path(os.path.relpath(folder / entry["shard"], into)).as_posix()
            key = (entry["id"], entry.get("config_hash"))
            if key in seen:
                raise ValueError(f"clip {entry['id']!r} is in both {seen[key]} and {relative}: index the folders "
                                 "separately, or remove one of them")  # fmt: skip
            seen[key] = relative
            entries.append({**entry, "shard": relative})
    return write_jsonl_atomic(into / INDEX_FILE, entries)


PART_PATTERN = re.compile(r"^(?P<stem>.+)-r(?P<rank>\d{4,})-of-(?P<world>\d{4,})\.jsonl$")  # one rank's file


def rank_parts(folder: Path, stem: str) -> dict[int, list[Path]]:
    """world size -> the ranks' ``<stem>-r<rank>-of-<world>.jsonl`` files in ``folder`` (rank order)."""
    parts: dict[int, list[Path]] = {}
    for path in sorted(folder.glob(f"{stem}-r*-of-*.jsonl")):
        match = PART_PATTERN.match(path.name)
        if match and match["stem"] == stem:
            parts.setdefault(int(match["world"]), []).append(path)
    return parts


def merge_parts(folder: Path, stem: str, world_size: int | None = None) -> tuple[Path | None, list[Path]]:
    """Concatenate the ranks' ``<stem>-r*-of-<world_size>.jsonl`` files into ``<stem>.jsonl``.

    Returns the merged file (None when that plan has no such files, or is a single process, whose
    ``<stem>.jsonl`` is already whole) and the files of other world sizes it ignored (an earlier
    run's ranks). ``world_size`` None: the one world size present (refused when there are several).
    """
    parts = rank_parts(folder, stem)
    if world_size is None:
        if len(parts) > 1:
            raise RefusedError(f"{folder} holds {stem} files of runs with {sorted(parts)} ranks and no {META_FILE} "
                               "saying which ran last: delete the stale ones")  # fmt: skip
        world_size = next(iter(parts), 1)
    ignored = [p for world, paths in sorted(parts.items()) if world != world_size for p in paths]
    mine = parts.get(world_size, [])
    if not mine:
        return None, ignored
    merged = write_text_atomic(folder / f"{stem}.jsonl", "".join(p.read_text(encoding="utf-8") for p in mine))
    return merged, ignored


# ----------------------------------------------------------------------------- writer thread


# ----------------------------------------------------------------------------- output folder


def read_meta(directory: Path) -> dict[str, Any] | None:
    path = directory / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def check_output_folder(directory: Path) -> None:
    """Create ``directory`` if needed and make sure this process can write into it; refuse with the fix if not."""
    if directory.exists() and not directory.is_dir():
        raise RefusedError(f"--out {directory} is a file, not a folder: name a folder (it is created if missing)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{TEMP_PREFIX}write-test.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RefusedError(f"cannot write into the output folder {directory} ({err.strerror or err}): choose a "
                           "folder you can write to, or fix its permissions") from err  # fmt: skip


def record_world_size(directory: Path, world_size: int, version: str) -> None:
    """Note in ``meta.json`` how many ranks the current plan has (``extract-index`` merges only theirs)."""
    meta = read_meta(directory) or {"format": FORMAT, "contaudio_version": version, "configs": {}}
    if meta.get("world_size") != world_size:
        write_meta(directory, {**meta, "world_size": world_size})


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old -> new`` for every key that differs.

    >>> describe_difference({"dtype": "float32", "tag": "a"}, {"dtype": "bfloat16", "tag": "a"})
    "dtype: 'float32' -> 'bfloat16'"
    """
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def remove_outputs(directory: Path) -> int:
    """Delete what extract wrote into ``directory`` (nothing else); return how many files."""
    removed = 0
    for pattern in OWN_PATTERNS:
        for path in directory.glob(pattern):
            path.unlink()
            removed += 1
    return removed


def prepare_output(
    directory: Path, config: dict[str, Any], version: str, *, overwrite: bool, allow_mixed: bool, world_size: int
) -> str:
    """Make ``directory`` ready for features of ``config``; return its hash.

    A folder holding features of another configuration is refused with the differences and the
    ways out; ``overwrite`` deletes what extract wrote there (single process only: ranks would
    delete each other's shards); ``allow_mixed`` adds beside them (entries carry their hash, and a
    clip counts as done only for the configuration that stored it). ``meta.json`` keeps every
    configuration and the current plan's ``world_size``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    meta = read_meta(directory)
    shards = finished_shards(directory)
    if overwrite and (meta is not None or shards):
        if world_size > 1:
            raise OutputMismatchError(
                f"overwrite=true with {world_size} ranks would let ranks delete each other's shards: "
                f"delete {directory} (or choose another output folder) before starting the ranks"
            )
        log.warning("overwrite=true: removed %d file(s) of an earlier extract from %s", remove_outputs(directory),
                    directory)  # fmt: skip
        meta, shards = None, []
    if meta is None and shards:
        raise OutputMismatchError(
            f"{directory} holds {len(shards)} shard(s) but no {META_FILE}: it is not an extract output folder "
            "this run can add to; choose another output folder, or replace them (--overwrite / extract.overwrite=true)"
        )
    configs: dict[str, Any] = dict(meta.get("configs", {})) if meta else {}
    if configs and digest not in configs:
        first_hash, first = next(iter(configs.items()))
        if not allow_mixed:
            raise OutputMismatchError(
                f"{directory} holds features made with another configuration ({first_hash}; differs in: "
                f"{describe_difference(first, config)}). Choose another output folder, replace them (--overwrite / "
                "extract.overwrite=true), or add these beside them (--allow-mixed / extract.allow_mixed=true; each "
                "index entry names its config_hash)"
            )
        log.warning("allow_mixed=true: adding features of config %s beside %s in %s", digest, first_hash, directory)
    for shard in shards:  # headers only: a damaged shard is refused (with the fix) before an encoder is built
        shard_metadata(shard)
    if meta and meta.get("contaudio_version") != version:
        log.warning("%s was written by contaudio %s; this is %s", directory, meta.get("contaudio_version"), version)
    if digest not in configs or (meta or {}).get("world_size") != world_size:
        configs[digest] = config
        write_meta(directory, {**(meta or {}), "format": FORMAT, "contaudio_version": (meta or {}).get(
            "contaudio_version", version), "configs": configs, "world_size": world_size})  # fmt: skip
    return digest
