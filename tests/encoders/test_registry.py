"""The registry: one decorator, a lookup that names what exists, and a conformance row for every family."""

from __future__ import annotations

import pytest
from helpers.families import FAMILY_CASES

from contaudio.encoders import FAMILIES, all_cards, family_for_model_type, get_family, register
from contaudio.encoders.qwen2_5_omni import Qwen2_5Omni


def test_every_family_has_a_tiny_card_and_a_conformance_row() -> None:
    """Adding a family without its row in tests/helpers/families.py (and so without every check) fails here."""
    assert {case.family for case in FAMILY_CASES} == set(FAMILIES)
    for case in FAMILY_CASES:
        card = all_cards()[case.card]
        assert card.family == case.family and card.hub_id is None
    assert {card.family for card in all_cards().values()} == set(FAMILIES)


def test_every_family_states_what_it_returns_and_what_its_oracle_runs() -> None:
    for family in FAMILIES.values():
        assert family.returns and family.oracle_path and family.name in repr(family)


def test_lookup_errors_name_what_exists() -> None:
    with pytest.raises(KeyError, match="known: " + ", ".join(sorted(FAMILIES))):
        get_family("qwen4")
    with pytest.raises(ValueError, match=r"supported model types: .*qwen2_5_omni_audio_encoder"):
        family_for_model_type("llama")
    assert family_for_model_type("qwen2_5_omni_thinker") is get_family("qwen2_5_omni")


def test_a_family_registers_once_and_model_types_stay_unique() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(Qwen2_5Omni)

    class Clash(Qwen2_5Omni):
        name = "clash"

    with pytest.raises(ValueError, match="already belong to another family"):
        register(Clash)
    assert "clash" not in FAMILIES
