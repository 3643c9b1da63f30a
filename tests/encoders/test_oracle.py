"""The oracle's generic parts: HF's answer or HF's error, per clip; HF methods run on our tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.checkpoints import TINY_QWEN_OMNI, card_extractor
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe

from contaudio.encoders.oracle import (
    AudioTowerHost,
    OracleRows,
    ask_hf,
    extract,
    padding_past_the_end,
    thinker_get_audio_features,
)


def test_ask_hf_keeps_rows_or_the_error() -> None:
    rows = ask_hf(lambda: torch.ones(3, 2, requires_grad=True) * 2)
    assert rows.count == 3 and not rows.rows.requires_grad and rows.describe() == "HF gave 3 rows"

    def broken() -> torch.Tensor:
        raise RuntimeError("AvgPool1d on 1 row")

    failed = ask_hf(broken)
    assert failed.rows is None and failed.count is None
    assert failed.describe() == "HF raised RuntimeError: AvgPool1d on 1 row"
    assert OracleRows(torch.empty(0, 4)).count == 0  # "returns nothing" is an answer too


def test_the_host_holds_the_tower_itself() -> None:
    tower = torch.nn.Linear(2, 2)
    host = AudioTowerHost(tower)
    assert host.audio_tower is tower and list(host.parameters()) == list(tower.parameters())


def test_extract_returns_hfs_features_and_its_frame_count() -> None:
    extractor = card_extractor(TINY_QWEN_OMNI)
    features, frames = extract(extractor, np.zeros(16001, np.float32), padding="max_length")
    assert features.shape == (1, 128, 30000) and frames == 101  # ceil(16001 / 160)


def test_padding_past_the_end_covers_every_straddling_window() -> None:
    for n in (1, 159, 160, 16000, 4_800_001):
        padded = padding_past_the_end(n, 400, 160)
        assert padded % 160 == 0 and padded >= n + 201


@pytest.mark.parametrize(("modeling", "prefix"), [(modeling_qwen2_5_omni, "Qwen2_5Omni"),
                                                  (modeling_qwen3_omni_moe, "Qwen3OmniMoe")])  # fmt: skip
def test_the_thinkers_own_get_audio_features_in_any_transformers(monkeypatch, modeling, prefix: str) -> None:
    """transformers >= 5.21: the inner thinker model's; before (ESPnet's 5.14.1): the ForConditionalGeneration's."""
    inner = getattr(modeling, f"{prefix}ThinkerModel", None)
    outer = getattr(modeling, f"{prefix}ThinkerForConditionalGeneration")
    assert thinker_get_audio_features(modeling, prefix) is (inner or outer).get_audio_features
    if inner is not None:  # as transformers 5.14.1 has it
        monkeypatch.delattr(modeling, f"{prefix}ThinkerModel")
        assert thinker_get_audio_features(modeling, prefix) is outer.get_audio_features
