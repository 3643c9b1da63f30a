"""Known bugs to inject, one at a time, to prove the checks can fail (``mutation=<name>``).

A check that has never been seen failing proves nothing. Each mutation patches the library for
the duration of one job and restores it afterwards (multirun jobs share one process):

- ``rows_off_by_one``: every family's length rule AND its forward's row selection give one more
  row per clip (the forward repeats the clip's last row), so contaudio still agrees with itself;
  only HF's oracle can tell.
- ``padding_leak``: the forward sees ``LEAK_FRAMES`` frames of batch padding past each clip's end
  (convs and attention read them); the rows returned are still the clip's count.
- ``feature_bug``: every featurizer computes with its ``with_known_bug()`` copy (Whisper's log-mel: a
  70 dB clamp instead of 80 dB); frame counts are unchanged, only HF's extractor can tell.
- ``oracle_error``: HF's side breaks: wherever HF answered a clip with rows, its oracle entry points
  (``oracle``, ``oracle_from_mel``) get HF's error instead, as from a changed transformers, and its
  model path (``hf_encode``, also bench's HF column) raises. The checks must fail naming the clip, never
  fall back to contaudio's rule (a clip HF refuses as its family declares, before its model runs, stays so).
- ``oracle_drops_row``: HF's answer for each clip loses its last row, as from an HF tower patched to drop
  a row; contaudio is right, so only a check that trusts HF's answer fails (as it must: the two
  disagree, and the check cannot know which is wrong).
- ``late_frames``: contaudio's forward reads the frames of each clip past 30 s shifted by one frame (a
  bug in the window / chunk / waveform-cut bookkeeping of long clips); shorter clips are untouched, so
  only a check holding a clip longer than 30 s can catch it.

Each family mutation also patches the objects the family's :meth:`~contaudio.encoders.EncoderFamily.view`
returns for other ``returns=`` modes (a subclass adding the projector, the hidden-states view).

    python -m experiments.suite experiment=ci_smoke mutation=padding_leak      # must fail
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import torch

from contaudio.encoders import FAMILIES, EncoderFamily, OracleRows
from contaudio.encoders.oracle import ask_hf
from contaudio.features import FEATURIZERS

LEAK_FRAMES = 2  # frames of padding a leaking forward reads past each clip's end
LATE_SECONDS = 30  # late_frames: frames from 30 s on (at the family's own frame rate) are read one frame late
ORACLE_ERROR = (
    "ValueError: HF's own path raised (mutation oracle_error: as when transformers' get_audio_features raises "
    "'length of audio_features should match audio_output_lengths')"
)


def split_rows(flat: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A forward's ``[..., sum rows, D]`` (``[L, ...]`` for hidden states) cut into each clip's rows."""
    return flat.split(rows.tolist(), dim=-2)


def rows_off_by_one(family: EncoderFamily) -> dict[str, Callable]:
    honest_rows, honest_forward = family.rows, family.forward

    def rows(mel_len: Any) -> Any:  # int or tensor, like the rule it wraps
        base = honest_rows(mel_len)
        return base + (base > 0) if isinstance(base, torch.Tensor) else base + int(base > 0)

    def forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        clips = split_rows(honest_forward(encoder, mel, lengths), honest_rows(lengths.cpu()))
        return torch.cat([torch.cat([c, c[..., -1:, :]], dim=-2) for c in clips], dim=-2)

    return {"rows": rows, "forward": forward}


def padding_leak(family: EncoderFamily) -> dict[str, Callable]:
    honest_forward = family.forward

    def forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.cpu()
        leaky = (lengths + LEAK_FRAMES).clamp(max=mel.shape[1])
        clips = split_rows(honest_forward(encoder, mel, leaky), family.rows(leaky))
        return torch.cat([c[..., :n, :] for c, n in zip(clips, family.rows(lengths).tolist(), strict=True)], dim=-2)

    return {"forward": forward}


def raise_oracle_error() -> torch.Tensor:
    raise ValueError(ORACLE_ERROR.removeprefix("ValueError: "))


def hf_answers(family: EncoderFamily, change: Callable[[OracleRows], OracleRows]) -> dict[str, Callable]:
    """The family's oracle entry points (``oracle``, ``oracle_from_mel``), each answer passed through ``change``
    where HF answered with rows (a clip HF refused before its model ran keeps its refusal)."""
    honest = {name: getattr(family, name) for name in ("oracle", "oracle_from_mel")}

    def entry(name: str) -> Callable[..., OracleRows]:
        def ask(*args: Any, **kwargs: Any) -> OracleRows:
            answer = honest[name](*args, **kwargs)
            return answer if answer.rows is None else change(answer)

        return ask

    return {name: entry(name) for name in honest}


def oracle_error(family: EncoderFamily) -> dict[str, Callable]:
    def hf_encode(encoder: torch.nn.Module, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return raise_oracle_error()

    return {**hf_answers(family, lambda answer: ask_hf(raise_oracle_error)), "hf_encode": hf_encode}


def oracle_drops_row(family: EncoderFamily) -> dict[str, Callable]:
    def drop(answer: OracleRows) -> OracleRows:  # rows [T, D] (or [L, T, D]) of one clip
        return replace(answer, rows=answer.rows[..., :-1, :]) if answer.rows.shape[-2] else answer

    return hf_answers(family, drop)


def late_frames(family: EncoderFamily) -> dict[str, Callable]:
    honest_forward = family.forward
    late = round(LATE_SECONDS * family.default_features.frame_rate)  # Granite's 20 ms frames: 1500

    def forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if mel.shape[1] <= late:
            return honest_forward(encoder, mel, lengths)
        shifted = torch.cat([mel[:, :late], mel[:, late - 1 : -1]], dim=1)  # frame t reads t - 1
        return honest_forward(encoder, shifted, lengths)

    return {"forward": forward}


FAMILY_MUTATIONS: dict[str, Callable[[EncoderFamily], dict[str, Callable]]] = {
    "rows_off_by_one": rows_off_by_one,
    "padding_leak": padding_leak,
    "oracle_error": oracle_error,
    "oracle_drops_row": oracle_drops_row,
    "late_frames": late_frames,
}
FEATURE_BUG = "feature_bug"
MUTATIONS = (*FAMILY_MUTATIONS, FEATURE_BUG)


@contextmanager
def patched_family(family: EncoderFamily, mutation: Callable[[EncoderFamily], dict[str, Callable]]) -> Iterator[None]:
    """Shadow the family's methods with the mutation's (instance attributes), and those of every other view
    :meth:`EncoderFamily.view` hands out meanwhile; remove the family's afterwards (a view lives with its IO)."""
    attributes = mutation(family)
    honest_view = family.view

    def view(*args: Any, **kwargs: Any) -> EncoderFamily:
        seen = honest_view(*args, **kwargs)
        if seen is not family:
            for name, value in mutation(seen).items():
                setattr(seen, name, value)
        return seen

    attributes = {**attributes, "view": view}
    try:
        for name, value in attributes.items():
            setattr(family, name, value)
        yield
    finally:
        for name in attributes:
            family.__dict__.pop(name, None)


@contextmanager
def buggy_featurizers() -> Iterator[None]:
    """Every registered featurizer computes through its ``with_known_bug()`` copy (class-level patch, undone after)."""
    methods = ("compute", "compute_batch")
    own = {(cls, name): cls.__dict__.get(name) for cls in FEATURIZERS.values() for name in methods}

    def buggy(method: Callable) -> Callable:
        return lambda self, wav: method(self.with_known_bug(), wav)

    try:
        for cls, name in own:
            setattr(cls, name, buggy(getattr(cls, name)))
        yield
    finally:
        for (cls, name), method in own.items():
            if method is None:
                delattr(cls, name)  # inherited: the base class's method shows through again
            else:
                setattr(cls, name, method)


@contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Apply the mutation ``name`` (None: none) to every registered family for the ``with`` block."""
    if name is None:
        yield
        return
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; known: {', '.join(MUTATIONS)}")
    with ExitStack() as stack:
        if name == FEATURE_BUG:
            stack.enter_context(buggy_featurizers())
        else:
            for family in FAMILIES.values():
                stack.enter_context(patched_family(family, FAMILY_MUTATIONS[name]))
        yield
