"""The featurizer registry: a checkpoint's preprocessor config picks its featurizer; each card's featurizer
rebuilds HF's own extractor with the card's settings and survives a round trip."""

from __future__ import annotations

import pytest
from helpers.checkpoints import card_extractor

from contaudio.encoders import all_cards
from contaudio.features import FEATURIZERS, Featurizer, featurizer_from_dict


@pytest.mark.parametrize("card", sorted(all_cards()))
def test_every_card_has_a_featurizer_that_round_trips(card: str) -> None:
    featurizer = featurizer_from_dict(all_cards()[card].feature_extractor)
    assert isinstance(featurizer, Featurizer)
    assert featurizer_from_dict(featurizer.to_dict()) == featurizer
    assert type(featurizer.hf_extractor()) is type(card_extractor(card))
    assert featurizer.frames(featurizer.sampling_rate) > 0 and featurizer.frame_rate > 0


@pytest.mark.parametrize("extractor_type", sorted(FEATURIZERS))
def test_known_bug_is_a_different_featurizer_with_the_same_frame_count(extractor_type: str) -> None:
    honest = FEATURIZERS[extractor_type].from_dict({"feature_extractor_type": extractor_type})
    buggy = honest.with_known_bug()
    assert buggy != honest and buggy.with_known_bug() == buggy
    assert [buggy.frames(n) for n in (1, 160, 16000)] == [honest.frames(n) for n in (1, 160, 16000)]
