"""Command line: ``python -m contaudio encode FILE... [--tag T] [--weights random] [--out feats.safetensors]``,
``python -m contaudio extract MANIFEST --out DIR`` (a whole corpus: ``contaudio.extract``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import soundfile
import torch
from safetensors.torch import save_file

from contaudio.dtypes import AUTO, DTYPES
from contaudio.encoders import UNAVAILABLE, all_cards
from contaudio.encoders.loading import WEIGHTS_MODES
from contaudio.encoders.registry import RETURNS
from contaudio.encoders.windows import LONG_CLIP_POLICIES, ClipTooLongError
from contaudio.extract.command import add_extract_commands
from contaudio.extract.manifests import ManifestError
from contaudio.extract.shards import OutputMismatchError, RefusedError
from contaudio.io import ContinuousAudioIO

USAGE_ERROR = 2  # argparse's exit status for a refused command line
FILES_FAILED = 1  # encode: some files could not be encoded (the others were)


class FilesFailedError(Exception):
    """``encode``: files that could not be read or were refused (each said on stderr as it came)."""


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """Any soundfile-readable file -> (``[C, N]`` float32, sample rate)."""
    samples, sr = soundfile.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), sr


def check_encode_files(files: Sequence[Path], out: Path | None) -> None:
    """Refuse, before an encoder is built, what ``encode`` could not finish: a missing file, an ``--out`` it
    cannot write, or two files whose tensors would share a key in ``--out`` (a file's name without suffix)."""
    if missing := [str(path) for path in files if not path.is_file()]:
        raise RefusedError(f"no such file: {', '.join(missing)}")
    if out is None:
        return
    by_key: dict[str, list[str]] = {}
    for path in files:
        by_key.setdefault(path.stem, []).append(str(path))
    if clashes := {key: paths for key, paths in by_key.items() if len(paths) > 1}:
        named = "; ".join(f"{key!r}: {', '.join(paths)}" for key, paths in clashes.items())
        raise RefusedError(f"--out keys each tensor by its file's name without suffix, and these files share one "
                           f"({named}): rename them, or encode them in separate runs")  # fmt: skip
    if out.is_dir():
        raise RefusedError(f"--out {out} is a folder: name the .safetensors file to write")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise RefusedError(f"--out {out}: its folder {out.parent} does not exist or is not writable")


def encode(args: argparse.Namespace) -> None:
    """Encode each file alone; a file that cannot be read or is refused is reported (stderr) and skipped, the
    others are written, and the command exits 1."""
    check_encode_files(args.files, args.out)
    start = time.perf_counter()
    try:
        io = ContinuousAudioIO(
            encoder_hf_model_tag=args.tag, dtype=args.dtype, device=args.device,
            attn_implementation=args.attn, weights=args.weights, long_clip=args.long_clip, returns=args.returns,
            layers=args.layers, cuda_graphs=args.cuda_graphs,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:  # a refused tag, weights, dtype, device or option
        raise RefusedError(f"cannot build the encoder: {err}") from err
    print(f"{args.tag}: {io.family.name}, {args.weights} weights, {io.torch_dtype} ({io.dtype_choice.reason}), "
          f"{io.device}, D={io.feature_dim()}, built in {time.perf_counter() - start:.1f} s")  # fmt: skip
    if args.weights != "pretrained":
        print("note: random weights: lengths, shapes and speed are real; the feature values are not")
    print(f"{'file':<40} {'dur_s':>7} {'frames':>7} {'rows':>6} {'pre_ms':>8} {'enc_ms':>8}")
    features: dict[str, torch.Tensor] = {}
    failed: list[Path] = []
    for path in args.files:
        try:
            wav, sr = read_audio(path)
            t0 = time.perf_counter()
            _, (rows, mel), _ = io.preprocess((wav, sr))
        except (ValueError, soundfile.SoundFileError) as err:  # unreadable, or refused (empty, NaN, too long, ...)
            hint = " (CLI: --long-clip windows)" if isinstance(err, ClipTooLongError) else ""
            print(f"{path}: {err}{hint}", file=sys.stderr)
            failed.append(path)
            continue
        t1 = time.perf_counter()
        with torch.inference_mode():
            (feats,) = io.encode_batch(torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]]))
        t2 = time.perf_counter()
        if not feats.shape[-2] == rows == io.find_length((wav, sr)):  # [T, D], or [L, T, D] (hidden states)
            raise RuntimeError(f"{path}: encoder rows {feats.shape[-2]} != preprocess T {rows}")
        features[path.stem] = feats.float().cpu().contiguous()
        print(f"{path.name:<40} {wav.shape[1] / sr:>7.2f} {mel.shape[0]:>7d} {rows:>6d} "
              f"{(t1 - t0) * 1e3:>8.1f} {(t2 - t1) * 1e3:>8.1f}")  # fmt: skip
    if args.out:
        save_file(features, str(args.out), metadata={"tag": args.tag, "weights": args.weights})
        print(f"wrote {len(features)} feature matrices to {args.out}")
    if failed:
        raise FilesFailedError(f"{len(failed)} of {len(args.files)} files could not be encoded (said above)")


def cards(_: argparse.Namespace) -> None:
    """Every shipped card; a card whose family the installed transformers lacks is marked, and why is said once."""
    for name, card in sorted(all_cards().items()):
        missing = UNAVAILABLE.get(card.family)
        mark = f" [unavailable: needs {missing.requirement}]" if missing else ""
        print(f"{name:<45} {card.family:<16} {card.description}{mark}")
    for missing in UNAVAILABLE.values():
        print(missing.message())


ENCODE_EPILOG = """\
exit status: 0 done; 1 some files could not be read or were refused (each said on stderr; the
others are written); 2 refused before encoding (a missing file, an --out it cannot write, an encoder
it cannot build).
rows: the LM positions of each file, as ContinuousAudioIO.find_length counts them from (wav, sr),
a sample count at 16 kHz, or find_length(None, before_length=M) with M the clip's *mel-frame* count
(ESPnet's convention: before_length=100 gives 25 rows on Qwen2.5-Omni).
dtype auto: bf16 on CUDA and on CPUs with native bf16 GEMMs (AVX512-BF16 or AMX), float32 elsewhere;
the dtype chosen and why are printed. CPUs without them emulate bf16/fp16 about 150x slower.
setup: on a Linux machine without a GPU, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`
installs torch from PyTorch's CPU wheel index instead of PyPI's multi-GB CUDA build (see README).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contaudio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser(
        "encode",
        help="encode audio files and print per-file lengths and timings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENCODE_EPILOG,
    )
    enc.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, ogg, ...)")
    add_encoder_arguments(enc)
    enc.add_argument("--out", type=Path, help="write features to this .safetensors file (one tensor per file, "
                     "keyed by its name without suffix)")  # fmt: skip
    enc.set_defaults(func=encode)
    lst = sub.add_parser("cards", help="list the shipped config cards")
    lst.set_defaults(func=cards)
    add_extract_commands(sub, add_encoder_arguments)
    return parser


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """--tag, --weights, --dtype, --device, --attn, --long-clip: what builds the ContinuousAudioIO."""
    parser.add_argument("--tag", default="Qwen/Qwen2.5-Omni-7B", help="hub id, local checkpoint dir or card name")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS_MODES,
        default="pretrained",
        help="pretrained (local dir / HF cache / hub), random (seeded, no download) or random_hf_init",
    )
    parser.add_argument("--dtype", choices=[AUTO, *sorted(DTYPES)], default=AUTO,
                        help="auto (default): bf16 on CUDA and on CPUs with native bf16 GEMMs (AVX512-BF16/AMX), "
                             "float32 elsewhere (bf16/fp16 are ~150x slower on CPUs that emulate them)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2", "varlen"], default=None)
    parser.add_argument(
        "--long-clip",
        choices=list(LONG_CLIP_POLICIES),
        default="raise",
        help="30 s encoders (Whisper, Qwen2-Audio, Voxtral) on longer files: raise, or encode 30 s windows",
    )
    parser.add_argument(
        "--returns",
        choices=list(RETURNS),
        default=None,
        help="what a clip's rows are: lm (default; what the model feeds its LM), tower (the audio tower's rows; "
        "Whisper's default) or hidden_states (with --layers)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="with --returns hidden_states: HF's output_hidden_states indices (0: the first layer's input, -1: last)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA only, experimental: replay the layer stack from a CUDA graph per bucket of padded shapes (small "
        "batches are launch-bound; Qwen-Omni, Qwen3-ASR, Qwen2-Audio, Audio Flamingo 3)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand; a refused input or output (a bad manifest, an output made with another configuration)
    ends with its message and exit status 2, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ManifestError, OutputMismatchError, RefusedError) as err:
        parser.exit(USAGE_ERROR, f"error: {err}\n")
    except FilesFailedError as err:
        parser.exit(FILES_FAILED, f"error: {err}\n")
