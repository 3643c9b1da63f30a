"""The conformance suite: every check, for every family of the table in ``tests/helpers/families.py``.

For each family's tiny card: its oracle IS HF's real full-model path (on a checkpoint transformers
saved itself); every mel length agrees with HF (length_check); padded batches equal each clip alone
and HF (mask_check); each injected bug (experiments/mutations.py) makes those checks fail with a
message naming the clip; only the audio tower is read from a whole sharded checkpoint; dummy_forward
is the raw output wired to every weight; the FLOP rule equals torch's counter on HF's forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import assert_holds_tower
from helpers.families import MODE_OVERRIDES, MODE_PARAMS
from helpers.hydra_compose import compose_config
from torch.utils.flop_counter import FlopCounterMode

from contaudio import ContinuousAudioIO
from contaudio.conformance import RULE, UNJUDGED
from contaudio.encoders import get_family
from contaudio.encoders.refusals import ClipSize
from experiments import length_check, mask_check
from experiments.mutations import MUTATIONS

pytestmark = pytest.mark.usefixtures("one_thread")
ORACLE_ATOL = 1e-5  # float32: the oracle harness runs HF's own code on the same weights as HF's full model
# one clip past 30 s (a second window, the waveform cut, later chunks): late_frames reaches nothing shorter
SMALL_RUN = ["length_check.m_max=40", "length_check.random_n=2", "length_check.edge_hops=[1,2,3]",
             "mask_check.num_batches=1", "mask_check.batch_size=3", "mask_check.long_clip_s=31"]  # fmt: skip
# which experiment must catch each mutation (length_check cannot see values)
CAUGHT_BY = {"rows_off_by_one": ("length_check", "mask_check"), "padding_leak": ("mask_check",),
             "feature_bug": ("mask_check",), "oracle_error": ("length_check", "mask_check"),
             "oracle_drops_row": ("length_check", "mask_check"), "late_frames": ("mask_check",)}  # fmt: skip
EXPERIMENTS = {"length_check": length_check, "mask_check": mask_check}
REFUSAL_SEARCH = 16000  # sample counts searched for a clip a declared refusal covers (1 s)


def loaded(case, family_checkpoints) -> tuple[ContinuousAudioIO, torch.nn.Module]:
    directory, model = family_checkpoints[case.family]
    io = ContinuousAudioIO(
        encoder_hf_model_tag=str(directory), weights="pretrained", dtype="float32", long_clip="windows", returns="tower"
    )  # fmt: skip (the table's references: tower rows)
    return io, model


def compose(case, tmp_path, *overrides: str):
    return compose_config(["experiment=ci_smoke", f"encoder={case.encoder_config}", "tracker=none",
                           f"output_dir={tmp_path}", *overrides])  # fmt: skip


def test_loads_only_the_audio_tower_of_a_whole_sharded_checkpoint(case, family_checkpoints) -> None:
    io, model = loaded(case, family_checkpoints)
    assert io.family.name == case.family
    assert_holds_tower(io, case.audio_tower(model).state_dict())


def test_oracle_is_hfs_own_full_model_path(case, family_checkpoints, speech_clips, rng) -> None:
    """The family's oracle (HF's methods on our loaded tower) equals HF's real full model on the same clips."""
    io, model = loaded(case, family_checkpoints)
    clips = {**speech_clips, "noise 2.5 s": noise(rng, 40000), "noise 0.1 s": noise(rng, 1601)}
    extractor = io.features.hf_extractor()
    with torch.inference_mode():
        for name, wav in clips.items():
            oracle = io.family.oracle(io.encoder, extractor, wav)
            reference = case.hf_rows(model, wav)
            assert oracle.error is None, (name, oracle.error)
            assert oracle.rows.shape == reference.shape, name
            torch.testing.assert_close(oracle.rows, reference, atol=ORACLE_ATOL, rtol=0, msg=name)


CHUNKED_M_MAX = 210  # past the 100- and 200-frame chunk edges of the chunked towers
WINDOWED_M_MAX = 64  # inside a 30 s window every M follows one conv rule, whose periods (2, 4, 16) 64 frames cover


@pytest.mark.parametrize(("case", "mode"), MODE_PARAMS)
def test_every_length_agrees_with_hf(case, mode: str, tmp_path) -> None:
    """length_check on the tiny card in each returns= mode: every M in 1..m_max and edge/random N, against HF's own
    rows (and, for "lm", its processor's placeholder count; each M of a 30 s family costs HF a whole window: the
    window's edge is checked by the family's own tests)."""
    m_max = WINDOWED_M_MAX if get_family(case.family).window_frames else CHUNKED_M_MAX
    cfg = compose(case, tmp_path, f"length_check.m_max={m_max}", "length_check.random_n=3",
                  "length_check.edge_hops=[1,2,3,100,200]", *MODE_OVERRIDES[mode])  # fmt: skip
    record = length_check.run(cfg)
    metrics = record["metrics"]
    assert record["status"] == "ok", metrics["first_failures"]
    by_rule = [row for table in record["tables"].values() for row in table if row["judged_by"] != "oracle"]
    assert all(row["judged_by"] == RULE and row["refusal"] for row in by_rule), by_rule  # each a declared refusal
    assert all(row["encoded"] == 0 for row in by_rule), by_rule  # only clips too short for a frame, where HF raises
    assert metrics["oracle_share"] >= get_family(case.family).min_oracle_share == metrics["min_oracle_share"]
    assert metrics["m_checked"] == m_max
    assert metrics["judged_by_oracle"] == metrics["m_checked"] + metrics["n_checked"] - len(by_rule)
    assert metrics["oracle"] == mode_view(case, mode).oracle_path


def mode_view(case, mode: str):
    family = get_family(case.family)
    layers = [0, 1] if mode == "hidden_states" else None
    return family.view(mode, layers, ContinuousAudioIO(encoder_hf_model_tag=case.card, skip_init_encoder=True,
                                                       weights="random").source.encoder_config)  # fmt: skip


@pytest.mark.parametrize(("case", "mode"), MODE_PARAMS)
def test_padded_batches_equal_each_clip_alone_and_hf(case, mode: str, tmp_path) -> None:
    cfg = compose(case, tmp_path, "mask_check.num_batches=2", "mask_check.batch_size=4", "mask_check.long_clip_s=35",
                  *MODE_OVERRIDES[mode])  # fmt: skip
    record = mask_check.run(cfg)
    metrics = record["metrics"]
    assert record["status"] == "ok", metrics["first_failures"]
    by_rule = [row for row in record["tables"]["clips"] if row["judged_by"] != "oracle"]
    assert all(row["judged_by"] == RULE and row["refusal"] for row in by_rule), by_rule  # each a declared refusal
    assert all(row["rows"] == 0 for row in by_rule), by_rule  # only clips too short for a frame, where HF raises
    assert metrics["oracle_share"] >= get_family(case.family).min_oracle_share
    assert metrics["judged_by_oracle"] + len(by_rule) == metrics["clips"] == 9
    assert metrics["max_abs_vs_oracle"] <= 1e-4
    rows = record["tables"]["clips"]
    assert any(r["num_samples"] <= 3 * 160 for r in rows) and any(r["num_samples"] > 30 * 16000 for r in rows)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_injected_bug_is_caught_and_named(case, tmp_path, mutation: str) -> None:
    for name, experiment in EXPERIMENTS.items():
        record = experiment.run(compose(case, tmp_path / name, *SMALL_RUN, f"mutation={mutation}", "strict=false"))
        failures = record["metrics"]["first_failures"]
        if name in CAUGHT_BY[mutation]:
            assert record["status"] == "failed" and failures, (name, record["error"])
            assert failures[0].startswith(("M=", "N=", "batch ")), failures[0]  # names the clip
        else:
            assert record["status"] == "ok", failures


def test_a_broken_hf_fails_both_checks_naming_the_clip_and_the_error(case, tmp_path) -> None:
    """The issue's case for every family: HF's own path raises for every clip it answered. No clip is judged by the
    rule but those HF refuses as declared (before its model runs); the first failure names the clip and HF's error,
    the last says how few clips HF judged."""
    for name, experiment in EXPERIMENTS.items():
        record = experiment.run(compose(case, tmp_path / name, *SMALL_RUN, "mutation=oracle_error", "strict=false"))
        metrics = record["metrics"]
        assert record["status"] == "failed" and metrics["judged_by_oracle"] == 0, name
        rows = [row for table in record["tables"].values() for row in table]
        assert all(row["judged_by"] == UNJUDGED or row["refusal"] for row in rows), name  # no silent switch
        assert "HF raised ValueError: HF's own path raised (mutation oracle_error" in metrics["first_failures"][0]
        assert metrics["first_failures"][0].startswith(("M=", "N=", "batch ")), metrics["first_failures"][0]
        assert metrics["first_failures"][-1].startswith("HF judged 0 of"), name  # and the share says so


def test_each_declared_refusal_is_one_hf_really_raises(case, family_checkpoints) -> None:
    """A family's expected_refusals stay true: for a clip in each one's range, HF's oracle raises that error (a
    refusal HF no longer raises, or raises differently, must be removed or corrected)."""
    io, _ = loaded(case, family_checkpoints)
    extractor = io.features.hf_extractor()
    for refusal in io.family.expected_refusals:
        sizes = (ClipSize(io.features.frames(n), n) for n in range(max(1, io.features.min_samples), REFUSAL_SEARCH))
        clip = next(c for c in sizes if (refusal.frames is None or c.frames in refusal.frames)
                    and (refusal.samples is None or c.samples in refusal.samples))  # fmt: skip
        with torch.inference_mode():
            oracle = io.family.oracle(io.encoder, extractor, noise(np.random.default_rng(0), clip.samples))
        assert oracle.error is not None and refusal.applies(oracle.error, clip), (refusal.describe(), oracle.error)
    assert 0 < io.family.min_oracle_share <= 1


@pytest.mark.parametrize(("case", "mode"), MODE_PARAMS)
def test_dummy_forward_is_the_raw_output_wired_to_every_weight(case, mode: str) -> None:
    layers = [0, 1] if mode == "hidden_states" else None
    io = ContinuousAudioIO(encoder_hf_model_tag=case.card, weights="random", dtype="float32", returns=mode,
                           layers=layers)  # fmt: skip
    io.encoder.requires_grad_(True)  # as fine-tuning code does
    ref = torch.zeros(2, 3, 5, dtype=torch.float64)
    out = io.dummy_forward(ref)
    assert out.shape[:-2] == io.family.leading_shape and out.shape[-2] >= 1 and out.shape[-1] == io.feature_dim()
    assert out.dtype == ref.dtype and bool(torch.isfinite(out).all())
    adaptor = torch.nn.Linear(io.feature_dim(), 5, dtype=torch.float64)
    (0.0 * adaptor(out).sum()).backward()
    missing = [name for name, p in io.encoder.named_parameters() if p.grad is None]
    assert not missing


def test_flop_rule_equals_torchs_counter_on_hfs_forward(case) -> None:
    io = ContinuousAudioIO(
        encoder_hf_model_tag=case.card,
        weights="random",
        dtype="float32",
        attn_implementation="eager",
        long_clip="windows",
        returns="tower",
    )  # fmt: skip (eager: countable matmuls; the tower's rule: each lm view's is tested with its family)
    lengths = torch.tensor(case.flop_lengths)
    # no_grad, not inference_mode: FlopCounterMode's module tracker fails under inference_mode when a module is
    # handed a parameter as input (Granite Speech's projector passes its learned queries to its Q-Former)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for m in case.flop_lengths:  # one clip per call: HF pads a batch's chunks to its longest
            io.family.reference_forward(io.encoder, torch.zeros(1, m, io.n_mels), torch.tensor([m]))
    assert io.family.flops(io.encoder.config, lengths) == encoder_flops(counter)


def encoder_flops(counter: FlopCounterMode) -> int:
    """The counted FLOPs less the rotary embeddings': transformers 5.14 computes rotary angles as a matmul
    (``inv_freq @ positions``), position bookkeeping that the FLOP rules (matmuls of the encoder's work) leave out."""
    counts = counter.get_flop_counts()
    rotary = sum(sum(ops.values()) for module, ops in counts.items() if module.endswith("rotary_emb"))
    return counter.get_total_flops() - rotary
