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

    python -m experiments.suite experiment=ci_smoke mutation=padding_leak      # must fail
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from contaudio.encoders import FAMILIES, EncoderFamily
from contaudio.features import FEATURIZERS

LEAK_FRAMES = 2  # frames of padding a leaking forward reads past each clip's end


def split_rows(flat: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return flat.split(rows.tolist())


def rows_off_by_one(family: EncoderFamily) -> dict[str, Callable]:
    honest_rows, honest_forward = family.rows, family.forward

    def rows(mel_len: Any) -> Any:  # int or tensor, like the rule it wraps
        base = honest_rows(mel_len)
        return base + (base > 0) if isinstance(base, torch.Tensor) else base + int(base > 0)

    def forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        clips = split_rows(honest_forward(encoder, mel, lengths), honest_rows(lengths.cpu()))
        return torch.cat([torch.cat([c, c[-1:]]) for c in clips])

    return {"rows": rows, "forward": forward}


def padding_leak(family: EncoderFamily) -> dict[str, Callable]:
    honest_forward = family.forward

    def forward(encoder: torch.nn.Module, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.cpu()
        leaky = (lengths + LEAK_FRAMES).clamp(max=mel.shape[1])
        clips = split_rows(honest_forward(encoder, mel, leaky), family.rows(leaky))
        return torch.cat([c[:n] for c, n in zip(clips, family.rows(lengths).tolist(), strict=True)])

    return {"forward": forward}


FAMILY_MUTATIONS: dict[str, Callable[[EncoderFamily], dict[str, Callable]]] = {
    "rows_off_by_one": rows_off_by_one,
    "padding_leak": padding_leak,
}
FEATURE_BUG = "feature_bug"
MUTATIONS = (*FAMILY_MUTATIONS, FEATURE_BUG)


@contextmanager
def patched_family(family: EncoderFamily, attributes: dict[str, Callable]) -> Iterator[None]:
    """Shadow the family's methods with instance attributes; remove them afterwards."""
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
                stack.enter_context(patched_family(family, FAMILY_MUTATIONS[name](family)))
        yield
