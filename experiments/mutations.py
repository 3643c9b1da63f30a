"""Known bugs to inject, one at a time, to prove the checks can fail (``mutation=<name>``).

A check that has never been seen failing proves nothing. Each mutation patches the library for
the duration of one job and restores it afterwards (multirun jobs share one process):

- ``rows_off_by_one``: every family's length rule AND its forward's row selection give one more
  row per clip (the forward repeats the clip's last row), so contaudio still agrees with itself;
  only HF's oracle can tell.
- ``padding_leak``: the forward sees ``LEAK_FRAMES`` frames of batch padding past each clip's end
  (convs and attention read them); the rows returned are still the clip's count.
- ``log_mel_clamp``: the log-mel clamp keeps 70 dB below the clip's peak instead of 80 dB.

    python -m experiments.suite experiment=ci_smoke mutation=padding_leak      # must fail
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from contaudio import features
from contaudio.encoders import FAMILIES, EncoderFamily

LEAK_FRAMES = 2  # frames of padding a leaking forward reads past each clip's end
WRONG_DYNAMIC_RANGE = 7.0  # log10 units: 70 dB instead of Whisper's 80 dB


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
MUTATIONS = (*FAMILY_MUTATIONS, "log_mel_clamp")


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
def patched_dynamic_range(value: float) -> Iterator[None]:
    honest = features.DYNAMIC_RANGE
    features.DYNAMIC_RANGE = value
    try:
        yield
    finally:
        features.DYNAMIC_RANGE = honest


@contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Apply the mutation ``name`` (None: none) to every registered family for the ``with`` block."""
    if name is None:
        yield
        return
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; known: {', '.join(MUTATIONS)}")
    with ExitStack() as stack:
        if name == "log_mel_clamp":
            stack.enter_context(patched_dynamic_range(WRONG_DYNAMIC_RANGE))
        else:
            for family in FAMILIES.values():
                stack.enter_context(patched_family(family, FAMILY_MUTATIONS[name](family)))
        yield
