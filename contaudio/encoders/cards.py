"""Shipped config cards: an encoder config + feature-extractor config, no weights.

Every architecture the registry knows ships as a card in ``contaudio/cards`` so
it can be built with random weights offline. A card's ``hub_id`` names where its
real weights live (``null`` for test cards, which have none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Card:
    name: str
    family: str
    hub_id: str | None
    description: str
    encoder_config: dict[str, Any]
    feature_extractor: dict[str, Any]
    model_config: dict[str, Any] | None = None  # the model's config.json minus the LM's weights-only details, for
    # ``returns="lm"`` views that add the model's projector (its settings and the LM width); None where not needed


@lru_cache(maxsize=1)
def all_cards() -> dict[str, Card]:
    """Every shipped card, keyed by its name (e.g. ``"Qwen/Qwen2.5-Omni-7B"``)."""
    cards = {}
    for entry in resources.files("contaudio.cards").iterdir():
        if entry.name.endswith(".json"):
            card = Card(**json.loads(entry.read_text()))
            cards[card.name] = card
    return cards


def find_card(tag: str) -> Card | None:
    """The card named ``tag``, or None."""
    return all_cards().get(tag)
