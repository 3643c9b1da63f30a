"""One short-clip policy for every family: ``find_length`` and ``preprocess`` agree on every clip length.

For every N in 1..2000 and at random N up to 30 s: both give the same rows (0 rows is a legal answer), or
both refuse the clip with the same error (e.g. Granite Speech's extractor cannot reflect-pad < 257 samples).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.families import FAMILY_CASES

from contaudio import ContinuousAudioIO

MAX_EVERY_N = 2000
RANDOM_N = 50


def outcome(call) -> int | str:
    """The rows ``call()`` gives, or the refusal it raises (type and message)."""
    try:
        return int(call())
    except ValueError as err:
        return f"ValueError: {err}"


@pytest.mark.parametrize("card", [case.card for case in FAMILY_CASES])
def test_find_length_and_preprocess_agree_for_every_clip_length(card: str) -> None:
    io = ContinuousAudioIO(encoder_hf_model_tag=card, skip_init_encoder=True, dtype="float32")
    rng = np.random.default_rng(0)
    sizes = [*range(1, MAX_EVERY_N + 1), *rng.integers(MAX_EVERY_N, 30 * io.sample_rate, size=RANDOM_N).tolist()]
    disagreements = []
    for n in sizes:
        wav = (rng.standard_normal(n) * 0.1).astype(np.float32)[None]
        counted = outcome(lambda: io.find_length(n))  # noqa: B023 (called at once)
        computed = outcome(lambda: io.preprocess((wav, io.sample_rate))[1][0])  # noqa: B023
        if counted != computed:
            disagreements.append((n, counted, computed))
    assert not disagreements, disagreements[:5]


def test_the_check_sees_a_disagreement(monkeypatch) -> None:
    """A featurizer that stops refusing short clips in ``find_length`` only (the bug this test guards) is caught."""
    io = ContinuousAudioIO(encoder_hf_model_tag="contaudio/tiny-granite-speech", skip_init_encoder=True)
    real = io.features

    class CountsAnyClip:  # find_length's check gone; preprocess's own extractor still refuses
        def __getattr__(self, name: str):
            return getattr(real, name)

        def check_samples(self, num_samples: int) -> None:
            return None

    monkeypatch.setattr(io, "features", CountsAnyClip())
    wav = np.zeros((1, 160), np.float32)
    assert outcome(lambda: io.find_length(160)) != outcome(lambda: io.preprocess((wav, 16000))[1][0])
