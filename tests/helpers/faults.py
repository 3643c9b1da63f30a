"""Faults the hidden-states checks inject, on HF's side and on ours, to be seen failing."""

from __future__ import annotations

from collections.abc import Callable

import torch

from contaudio.encoders.packed import windowed_hidden_states

HIDDEN_STATES_SHIFT = 1e-3  # how far HF's fault moves every hidden state


def moved_hidden_states(forward: Callable) -> Callable:
    """HF's fault: an encoder ``forward`` whose ``output_hidden_states`` entries are all moved by 1e-3."""

    def moved(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if out.hidden_states is not None:
            out.hidden_states = tuple(state + HIDDEN_STATES_SHIFT for state in out.hidden_states)
        return out

    return moved


def layers_one_deeper(layers, hidden, window_rows, kernel, wanted, layout=None) -> torch.Tensor:
    """Our fault, in place of ``windowed_hidden_states``: every requested hidden state one layer deeper (the last
    stays)."""
    deeper = tuple(min(index + 1, len(layers)) for index in wanted)
    return windowed_hidden_states(layers, hidden, window_rows, kernel, deeper, layout)
