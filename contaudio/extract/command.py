"""``python -m contaudio extract`` and ``extract-index``: the plain command line over :func:`run_extract`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from contaudio.dtypes import DTYPES
from contaudio.extract.lock import running_ranks
from contaudio.extract.manifests import MANIFEST_FORMATS, ManifestError, read_manifest
from contaudio.extract.outputs import merge_summaries, write_outputs
from contaudio.extract.ranks import resolve_rank
from contaudio.extract.run import MODES, STORE_SAME, ExtractOptions, run_extract
from contaudio.extract.shards import (
    RefusedError,
    check_output_folder,
    finished_shards,
    merge_parts,
    read_meta,
    write_index,
)

log = logging.getLogger(__name__)

LENGTH_PARTS = ("lengths", "errors")  # per-rank files extract-index concatenates

EXTRACT_EPILOG = """\
inputs: a Lhotse CutSet/RecordingSet (*.jsonl.gz), a Kaldi wav.scp or data folder (+ segments), a JSONL of
{"id", "path"[, "start", "end"]}, a folder of audio files or a glob pattern ('corpus/**/*.flac').
outputs in --out: lengths mode: lengths.jsonl (id, samples at the model rate, mel_frames, rows, duration_s).
--mode lengths --espnet --train-config train.yaml --specifier task:name:data.json (no INPUT; in ESPnet's
environment): stats_<task>_<name>.jsonl exactly as ESPnet's bin/prepare_length_stats.py writes them (its own job,
preprocessor and readers, contaudio's IO registered; audio counted from file headers). A sample that cannot be
read fails the run, listing the ids; --espnet-drop-unreadable leaves them out and writes data_<task>_<name>.json
(the data json without them) to train on.
features mode: shard-r<rank>-<n>.safetensors (one [rows, D] tensor per clip), index.jsonl, meta.json;
read them with contaudio.FeatureStore(out). Both: errors.jsonl (clips that could not be read) and
summary.json. A rerun skips finished shards (and the clips they record as undecodable, unless
--retry-failed); another configuration is refused unless --overwrite or --allow-mixed. One run per
rank slice: a second one on the same slice is refused, naming the first (a lock in OUT). Ranks:
torchrun (RANK/WORLD_SIZE, one GPU each via LOCAL_RANK), a SLURM array (SLURM_ARRAY_TASK_ID/COUNT)
or --rank/--world-size; then `extract-index OUT` rebuilds one index and a summary.json over the ranks.
features mode, single process or extract-index: also cuts.jsonl.gz (a Lhotse CutSet; call
contaudio.extract.outputs.register_lhotse_reader() before cut.load_features()), feats.scp + feats_shape
(ESPnet-style lists: contaudio.extract.outputs.FeatsScp reads them) and, with --stats, feats_stats.npz
(per-dimension count/sum/sum_square/mean/std, ESPnet collect_stats' layout; reads every stored tensor).
wav.scp entries that are shell commands ('cmd args |') fail per clip unless --allow-pipes runs them.
exit status: 0 done; 1 too many clips failed (every clip, or more than --max-errors N) or --verify
failed; 2 refused before any work (a bad manifest or command line, an output folder that is a file,
not writable, locked by another run or holding another configuration, a tag that cannot be built).
"""


def add_extract_commands(sub: argparse._SubParsersAction, add_encoder_arguments: Callable) -> None:
    """Register ``extract`` (with the encoder arguments of ``encode``) and ``extract-index``."""
    ext = sub.add_parser("extract", help="lengths or features for a whole manifest, resumable, sharded",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXTRACT_EPILOG)  # fmt: skip
    ext.add_argument("input", nargs="?", help="manifest, wav.scp, Kaldi/ESPnet data folder, JSONL, audio folder, glob")
    ext.add_argument("--out", "--output-dir", type=Path, required=True, help="output folder (shared by every rank)")
    ext.add_argument("--mode", choices=MODES, default="features", help="lengths (no encoder) or features")
    ext.add_argument("--format", choices=MANIFEST_FORMATS, default="auto", help="manifest format (default: by name)")
    ext.add_argument("--segments", help="Kaldi segments file (default: the one beside wav.scp, if any)")
    add_encoder_arguments(ext)
    ext.add_argument("--max-duration", type=float, default=None, help="clips longer than this (s) go to errors.jsonl")
    ext.add_argument("--seed", type=int, default=0, help="seed of random weights and of --verify's sample")
    ext.add_argument(
        "--workers", type=int, default=None, help="data-loader workers (0: in this process; default: min(8, cores - 1))"
    )
    ext.add_argument("--max-frames", type=int, default=48_000, help="padded mel frames per batch (clips x longest)")
    ext.add_argument("--max-clips", type=int, default=64, help="clips per batch")
    ext.add_argument("--shard-mb", type=float, default=512.0, help="target shard size in MiB")
    ext.add_argument("--store-dtype", choices=[STORE_SAME, *DTYPES], default=STORE_SAME,
                     help="dtype of the stored features (same: the compute dtype)")  # fmt: skip
    ext.add_argument("--overwrite", action="store_true", help="replace features of another configuration in --out")
    ext.add_argument("--allow-mixed", action="store_true", help="add beside features of another configuration")
    ext.add_argument("--verify", type=int, default=0, metavar="N",
                     help="re-encode N random clips and compare; check every stored row count")  # fmt: skip
    ext.add_argument("--decode-lengths", action="store_true", help="count samples by decoding, not from headers")
    ext.add_argument(
        "--max-errors",
        type=int,
        default=None,
        metavar="N",
        help="exit 1 when more than N clips cannot be used (default: only when every clip fails)",
    )
    ext.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again the clips finished shards record as undecodable (after every other clip)",
    )
    ext.add_argument("--espnet", action="store_true", help="ESPnet's length stats, exactly (see below)")
    ext.add_argument("--train-config", type=Path, help="--espnet: ESPnet's train YAML (its job and IOs)")
    ext.add_argument("--specifier", "--train-unregistered-specifier", "--valid-unregistered-specifier",
                     action="append", default=[], metavar="TASK:NAME:DATA_JSON[:FACTOR]",
                     help="--espnet: one ESPnet data specifier; repeat for more")  # fmt: skip
    ext.add_argument("--espnet-drop-unreadable", action="store_true",
                     help="--espnet: leave unreadable samples out (and write a data json without them)")  # fmt: skip
    ext.add_argument("--rank", type=int, default=None, help="this job's slice (default: torchrun/SLURM env)")
    ext.add_argument("--world-size", type=int, default=None, help="number of slices")
    ext.add_argument("--no-progress", action="store_true", help="no progress bar")
    ext.add_argument("--allow-pipes", action="store_true",
                     help="run wav.scp pipe entries ('cmd args |': shell commands), decode their stdout")  # fmt: skip
    ext.add_argument("--stats", action="store_true",
                     help="single process: also write feats_stats.npz (reads every stored tensor once)")  # fmt: skip
    ext.set_defaults(func=extract)
    idx = sub.add_parser("extract-index", help="rebuild index.jsonl (and lengths.jsonl) after many ranks")
    idx.add_argument("folders", nargs="+", type=Path, help="extract output folders")
    idx.add_argument("--into", type=Path, default=None, help="write one index over every folder here")
    idx.add_argument("--stats", action="store_true", help="also write feats_stats.npz (reads every stored tensor)")
    idx.add_argument("--config-hash", default=None, help="a folder holding several configurations (--allow-mixed): "
                     "write the cuts, lists and stats of this one (meta.json lists them)")  # fmt: skip
    idx.set_defaults(func=extract_index)


def extract(args: argparse.Namespace) -> None:
    """Every refusal (command line, manifest, output folder, lock, configuration, tag) is one line on stderr with
    exit status 2, before any encoder is built; too many failed clips or a failed verify exit 1."""
    if args.espnet:
        return extract_espnet_stats(args)
    if args.input is None:
        usage_error("extract needs INPUT (a manifest, folder or glob), or --espnet with --specifier")

    try:
        options = ExtractOptions(
            out=args.out, mode=args.mode, workers=args.workers, max_frames=args.max_frames, max_clips=args.max_clips,
            shard_mb=args.shard_mb, store_dtype=args.store_dtype, overwrite=args.overwrite,
            allow_mixed=args.allow_mixed, verify=args.verify, seed=args.seed, decode_lengths=args.decode_lengths,
            progress=not args.no_progress, max_errors=args.max_errors, retry_failed=args.retry_failed,
        )  # fmt: skip
        rank = resolve_rank(os.environ, args.rank, args.world_size)
        clips = read_manifest(args.input, args.format, args.segments, allow_pipes=args.allow_pipes)
        io_kwargs = {
            "encoder_hf_model_tag": args.tag, "weights": args.weights, "dtype": args.dtype, "device": args.device,
            "attn_implementation": args.attn, "long_clip": args.long_clip, "max_duration_s": args.max_duration,
            "returns": args.returns, "layers": args.layers, "seed": args.seed, "cuda_graphs": args.cuda_graphs,
        }  # fmt: skip
        summary = run_extract(clips, io_kwargs, options, rank)
    except (RefusedError, ManifestError) as err:
        usage_error(str(err))
    except ValueError as err:  # resolve_rank's refusals (a rank outside the world size, an env var not a number)
        if "rank" not in str(err) and "environment variable" not in str(err):
            raise
        usage_error(str(err))
    if options.mode == "features" and rank.world_size == 1:
        for path in write_outputs([args.out], args.out, stats=args.stats, config_hash=summary.get("config_hash")):
            log.info("wrote %s", path)
    elif args.stats and options.mode == "features":
        log.warning("--stats: feats_stats.npz covers every rank: write it with `extract-index %s --stats` when all "
                    "%d ranks have finished", args.out, rank.world_size)  # fmt: skip
    print(json.dumps(summary, indent=2))
    problems = [summary["failure"]] if summary.get("failure") else []
    if summary.get("verify") and not summary["verify"]["passed"]:
        report = summary["verify"]
        problems.append(f"verify failed: {report['failed']} problem(s), e.g. {report['failures'][:3]}")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        raise SystemExit(1)


def usage_error(message: str) -> NoReturn:
    """``error: message`` on stderr, exit status 2 (a refused command line, as argparse)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def extract_espnet_stats(args: argparse.Namespace) -> None:
    """``--espnet``: ESPnet's ``stats_<task>_<name>.jsonl`` (``contaudio.integrations.espnet.stats``); exit 2 when
    refused (no ESPnet, a missing flag), 1 listing the ids when samples cannot be read."""
    from contaudio.integrations.espnet.stats import EspnetMissing, UnreadableSamples, espnet_stats

    if args.mode != "lengths":
        usage_error("--espnet writes ESPnet's length stats: use it with --mode lengths")
    if args.input is not None:
        usage_error(f"--espnet reads ESPnet's data json from --specifier TASK:NAME:DATA_JSON, not INPUT ({args.input})")
    if args.train_config is None or not args.specifier:
        usage_error("--espnet needs --train-config (ESPnet's train YAML) and at least one --specifier")
    try:
        results = espnet_stats(args.train_config, args.specifier, args.out, args.espnet_drop_unreadable)
    except EspnetMissing as err:
        usage_error(str(err))
    except UnreadableSamples as err:
        raise SystemExit(f"error: {err}") from err
    summary = [{"stats": str(r.path), "samples": len(r.stats), "skipped_existing": r.skipped,
                "dropped": sorted(r.dropped), "data_json": str(r.data_json) if r.data_json else None}
               for r in results]  # fmt: skip
    print(json.dumps(summary, indent=2))


def extract_index(args: argparse.Namespace) -> None:
    """Merge the per-rank lengths/errors files of each folder's current plan (the world size its ``meta.json``
    records; files of other world sizes are an earlier run's: ignored, and said so), then one index."""
    if args.into is None and len(args.folders) > 1:
        usage_error("several folders: say where their common index goes with --into")
    for folder in args.folders:  # every refusal before anything is written
        if not folder.is_dir():
            usage_error(f"{folder} is not a folder: pass extract output folders")
        if running := running_ranks(folder):
            usage_error(f"{folder} is still being written by {'; '.join(running)}: run extract-index when every "
                        "rank has finished")  # fmt: skip
        if read_meta(folder) is None and not any(p for stem in LENGTH_PARTS for p in folder.glob(f"{stem}*.jsonl")):
            usage_error(f"{folder} holds no extract output (no meta.json, lengths or errors files): pass the --out "
                        "folder of an extract run")  # fmt: skip
    try:
        for folder in [*args.folders, *([args.into] if args.into else [])]:
            check_output_folder(folder)  # every merge writes into it (--into is created if missing)
    except RefusedError as err:
        usage_error(str(err))
    unfinished = []
    for folder in args.folders:
        world_size = (read_meta(folder) or {}).get("world_size")
        for stem in LENGTH_PARTS:
            try:
                merged, ignored = merge_parts(folder, stem, world_size)
            except RefusedError as err:
                usage_error(str(err))
            if merged is not None:
                print(f"wrote {merged}")
            if ignored:
                print(f"ignored {len(ignored)} {stem} file(s) of an earlier run with another world size (this "
                      f"folder's plan: {world_size} rank(s)): {', '.join(p.name for p in ignored)}")  # fmt: skip
        if (summary := merge_summaries(folder, world_size)) is not None:
            print(f"wrote {summary}")
            if missing := json.loads(summary.read_text(encoding="utf-8"))["missing_ranks"]:
                unfinished.append(f"{folder}: rank(s) {missing} of {world_size} have not finished")
    if any(finished_shards(folder) for folder in args.folders):
        into = args.into or args.folders[0]
        try:
            print(f"wrote {write_index(args.folders, into)}")
        except ValueError as err:
            usage_error(str(err))
        for path in write_outputs(args.folders, into, stats=args.stats, config_hash=args.config_hash):
            print(f"wrote {path}")
    if unfinished:  # what was written covers the finished ranks only
        print(f"error: {'; '.join(unfinished)} (no summary of theirs): the index covers the other ranks only; run "
              "the missing ranks (a rerun resumes), then extract-index again", file=sys.stderr)  # fmt: skip
        raise SystemExit(1)
