"""The registry: one decorator, a lookup that names what exists, and a conformance row for every family."""

from __future__ import annotations

import importlib
import sys

import pytest
import transformers
from helpers.families import FAMILY_CASES, needs_family

from contaudio import ContinuousAudioIO
from contaudio.cli import main
from contaudio.encoders import (
    FAMILIES,
    FAMILY_MODULES,
    UNAVAILABLE,
    FamilyUnavailableError,
    all_cards,
    family_for_model_type,
    get_family,
    import_families,
    register,
)
from contaudio.encoders.qwen2_5_omni import Qwen2_5Omni
from contaudio.encoders.registry import TRANSFORMERS_SINCE

ESPNET_FAMILIES = {"qwen2_5_omni", "qwen3_omni"}  # the towers ESPnet's own class supports: never unavailable


def test_every_family_has_a_tiny_card_and_a_conformance_row() -> None:
    """Adding a family without its row in tests/helpers/families.py (and so without every check) fails here."""
    known = set(FAMILIES) | set(UNAVAILABLE)
    assert {case.family for case in FAMILY_CASES} == known == set(FAMILY_MODULES)
    assert not set(FAMILIES) & set(UNAVAILABLE)
    for case in FAMILY_CASES:
        card = all_cards()[case.card]
        assert card.family == case.family and card.hub_id is None
    assert {card.family for card in all_cards().values()} == known


def test_unavailable_families_are_known_to_need_a_later_transformers() -> None:
    """In ESPnet's environment (the minimum-versions run) the ESPnet towers load, and a family the installed
    transformers lacks names the release that has what it needs."""
    assert not ESPNET_FAMILIES & set(UNAVAILABLE)
    for missing in UNAVAILABLE.values():
        assert missing.needs is not None, missing.message()
        assert missing.installed == transformers.__version__


@pytest.fixture
def qwen3_asr_without_its_encoder(monkeypatch):
    """The registry as a transformers without ``Qwen3ASREncoder`` leaves it (the family module imported again)."""
    modeling_qwen3_asr = importlib.import_module("transformers.models.qwen3_asr.modeling_qwen3_asr")
    monkeypatch.delattr(modeling_qwen3_asr, "Qwen3ASREncoder")
    monkeypatch.delitem(sys.modules, "contaudio.encoders.qwen3_asr")
    monkeypatch.delitem(FAMILIES, "qwen3_asr")
    import_families(["qwen3_asr"])
    yield UNAVAILABLE["qwen3_asr"]
    del UNAVAILABLE["qwen3_asr"]


@needs_family("qwen3_asr")
def test_a_family_missing_a_transformers_class_is_unavailable_and_says_what_to_install(
    qwen3_asr_without_its_encoder, capsys
) -> None:
    missing = qwen3_asr_without_its_encoder
    assert missing.missing == "transformers.models.qwen3_asr.modeling_qwen3_asr.Qwen3ASREncoder"
    assert (missing.installed, missing.needs) == (
        transformers.__version__,
        TRANSFORMERS_SINCE["transformers.models.qwen3_asr"],
    )
    message = missing.message()
    for part in ("'qwen3_asr'", "Qwen3ASREncoder", f"transformers {transformers.__version__} lacks",
                 "first in transformers 5.13.0", "pip install 'transformers>=5.13.0'"):  # fmt: skip
        assert part in message, part
    assert "qwen3_asr" not in FAMILIES and "qwen2_5_omni" in FAMILIES
    with pytest.raises(FamilyUnavailableError) as err:
        get_family("qwen3_asr")
    assert str(err.value) == message
    with pytest.raises(FamilyUnavailableError, match="Qwen3ASREncoder"):
        ContinuousAudioIO(encoder_hf_model_tag="contaudio/tiny-qwen3-asr", weights="random", dtype="float32")
    with pytest.raises(ValueError, match=r"unavailable with transformers .*qwen3_asr \(needs transformers>=5\.13\.0\)"):
        family_for_model_type("qwen3_asr")
    # the cards stay listed, marked
    assert all_cards()["contaudio/tiny-qwen3-asr"].family == "qwen3_asr"
    main(["cards"])
    printed = capsys.readouterr().out.splitlines()
    asr = [line for line in printed if line.startswith("contaudio/tiny-qwen3-asr ")]
    assert len(asr) == 1 and asr[0].endswith("[unavailable: needs transformers>=5.13.0]")
    assert not any("unavailable" in line for line in printed if line.startswith("contaudio/tiny-qwen2.5-omni "))
    assert message in printed


def test_an_import_error_that_is_not_a_missing_transformers_name_propagates() -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_family"):
        import_families(["no_such_family"])
    assert "no_such_family" not in UNAVAILABLE


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
