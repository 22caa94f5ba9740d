"""Integrated gradients: equal to captum on the same path, adaptive only where the error is, on time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from cds_plugin.explain import prepare
from cds_plugin.explain.explanation import ExplanationError, ExplanationTimeout
from cds_plugin.explain.integrated_gradients import DEFAULTS
from cds_plugin.model.facts import MASK


class _Probability(nn.Module):
    """The explained function as captum sees it: fact ids and presence gates in, the label
    probabilities out; captum attributes to the fact-embedding layer's output and to the gates."""

    def __init__(self, inp) -> None:
        super().__init__()
        self.network = inp.engine.network
        self.temperature = inp.engine.model.temperature
        self.batch = inp.batch()
        self.gate = nn.Identity()

    def forward(self, codes, values, times, kinds, concepts, display_index, gates):
        n = codes.shape[0]
        embeds = self.network.embed(
            codes, values, times, kinds, concepts, self.batch.extra_displays, display_index
        )
        logits = self.network.forward_embeds(
            embeds, self.batch.mask.expand(n, -1), self.batch.bag().expand(n), self.gate(gates)
        )
        return torch.sigmoid(logits / self.temperature)


def _captum(inp, label: int, steps: int) -> np.ndarray:
    """captum's LayerIntegratedGradients on the embedding layer and the gates, from the [MASK] fact
    (its display row too) with no value, time, kind or concept: the `mask` baseline."""
    b = inp.batch()
    codes = b.codes
    zeros = torch.zeros_like(codes)
    concepts = b.concepts if b.concepts is not None else zeros
    display_index = b.display_index if b.display_index is not None else codes
    inputs = (codes, b.values, b.times, b.kinds, concepts, display_index, torch.ones(codes.shape))
    mask_ids = torch.full_like(codes, MASK)
    baselines = (mask_ids, zeros, zeros, zeros, zeros, mask_ids, torch.zeros(codes.shape))
    model = _Probability(inp)
    lig = LayerIntegratedGradients(model, [model.network.norm, model.gate])
    embed_attr, gate_attr = lig.attribute(
        inputs, baselines=baselines, target=label, n_steps=steps, method="gausslegendre"
    )
    return (embed_attr.sum(-1) + gate_attr)[0].double().numpy()


@pytest.mark.filterwarnings("ignore:Multiple layers provided")  # the two layers are independent inputs
def test_equals_captum_layer_integrated_gradients_for_three_targets_at_once(engine, synthea_assessments):
    a = max(synthea_assessments, key=lambda x: len(x.encoded))
    top3 = a.considerations[:3]
    steps = 16
    ours = engine.explain(a, top3, steps=steps, intervals=1, max_steps=steps, tolerance=1e3)
    inp = prepare(engine, a)
    for consideration, explanation in zip(top3, ours, strict=True):
        expected = _captum(inp, consideration.label_index, steps)
        got = np.array([f.score for f in explanation.facts])
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 1e-3  # a comparison of real scores, not of zeros
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert explanation.settings["steps_used"] == steps


def test_adds_steps_only_for_targets_above_the_tolerance(engine, synthea_assessments):
    refined_some = False
    tolerance = DEFAULTS["tolerance"] / 100  # tighter than the default, so that some targets need refining
    for a in synthea_assessments:
        targets = a.considerations[:3]
        first = engine.explain(
            a, targets, max_steps=DEFAULTS["steps"], tolerance=tolerance
        )  # the first pass alone
        adaptive = engine.explain(a, targets, tolerance=tolerance)
        for before, after in zip(first, adaptive, strict=True):
            assert before.settings["steps_used"] == DEFAULTS["steps"]
            if before.completeness_error <= tolerance:
                assert after.settings["steps_used"] == DEFAULTS["steps"]
                assert after.completeness_error == pytest.approx(before.completeness_error, abs=1e-9)
            else:
                refined_some = True
                assert after.settings["steps_used"] > DEFAULTS["steps"]
                assert after.completeness_error < before.completeness_error
            assert after.completeness_error <= tolerance or (
                after.settings["steps_used"] > DEFAULTS["max_steps"] - 2 * after.settings["steps"] // 4
                and after.warnings
            )
    assert refined_some, "no target needed refining: the test did not exercise it"


def test_scores_add_up_on_every_interval_of_a_fine_rule(engine, synthea_assessments):
    """Completeness holds on each piece of the path, which is what the refinement relies on: the sum
    over intervals equals F(x) - F(baseline) within the reported error."""
    a = synthea_assessments[1]
    e = engine.explain(a, a.considerations[0], tolerance=1e-4, max_steps=512)
    delta = e.f_x - e.f_baseline
    assert abs(sum(f.score for f in e.facts) - delta) <= max(abs(delta), 1e-3) * max(
        e.completeness_error, 1e-4
    )
    assert e.completeness_error < 0.01
    assert e.settings["intervals_used"] >= DEFAULTS["intervals"]


def test_a_budget_too_small_raises_a_timeout(engine, synthea_assessments):
    a = synthea_assessments[0]
    with pytest.raises(ExplanationTimeout):
        engine.explain(a, a.considerations[:3], budget_s=1e-6)
    assert engine.explain(a, a.considerations[:3], budget_s=60.0)[0].completeness_error is not None


@pytest.mark.parametrize(
    "settings",
    [
        {"steps": 6, "intervals": 4},
        {"intervals": 0},
        {"max_steps": 4},
        {"tolerance": 0},
        {"budget_s": -1},
        {"baseline": "noise"},
        {"steps": True},
    ],
)
def test_bad_settings_are_refused(engine, synthea_assessments, settings):
    a = synthea_assessments[0]
    with pytest.raises(ExplanationError):
        engine.explain(a, a.considerations[0], **settings)


def _timeout_after_first_pass(monkeypatch) -> None:
    """Every batch after the first pass overruns the budget (as on a slow or busy machine)."""
    from cds_plugin.explain import integrated_gradients as ig

    original = ig._Path.integrate
    calls = []

    def integrate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise ExplanationTimeout("over budget")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ig._Path, "integrate", integrate)


def test_the_budget_stops_the_refinement_when_the_error_is_acceptable(
    engine, synthea_assessments, monkeypatch
):
    a = synthea_assessments[0]
    first = engine.explain(a, a.considerations[0], max_steps=DEFAULTS["steps"])
    _timeout_after_first_pass(monkeypatch)
    kept = engine.explain(a, a.considerations[0], tolerance=1e-9, budget_s=60.0, budget_tolerance=1.0)
    assert kept.settings["stopped_by_budget"] is True
    assert kept.settings["steps_used"] == DEFAULTS["steps"]
    assert kept.completeness_error == pytest.approx(first.completeness_error, abs=1e-9)
    assert "time budget stopped the refinement" in kept.warnings[0]
    monkeypatch.undo()
    _timeout_after_first_pass(monkeypatch)
    with pytest.raises(ExplanationTimeout):  # an error above budget_tolerance is not accepted
        engine.explain(a, a.considerations[0], tolerance=1e-9, budget_s=60.0, budget_tolerance=1e-9)


def test_the_baseline_is_the_empty_record_whose_odds_cards_compare_with(engine, synthea_assessments):
    """Cards need the record to raise the odds over an empty record (`Consideration.odds_ratio`); that
    empty record is integrated gradients' baseline, so a card's scores add up to exactly that change."""
    assessment = synthea_assessments[0]
    top = assessment.considerations[:3]
    for c, e in zip(top, engine.explain(assessment, top), strict=True):
        assert e.f_baseline == pytest.approx(c.baseline_probability, abs=1e-6)
        assert e.f_x == pytest.approx(c.probability, abs=1e-6)
        odds = (c.probability / (1 - c.probability)) / (e.f_baseline / (1 - e.f_baseline))
        assert c.odds_ratio == pytest.approx(odds, rel=1e-4)


def test_a_target_out_of_steps_says_so_even_when_the_budget_stopped_the_others():
    from cds_plugin.explain.integrated_gradients import _Target, unfinished_because

    settings = {**DEFAULTS, "steps": 8, "intervals": 4, "max_steps": 16}
    out_of_steps, with_room = _Target(0, steps_used=16), _Target(1, steps_used=12)
    assert unfinished_because(out_of_steps, settings, stopped_by_budget=True) == "max_steps reached"
    assert unfinished_because(with_room, settings, stopped_by_budget=True) == (
        "the time budget stopped the refinement"
    )
    assert unfinished_because(with_room, settings, stopped_by_budget=False) == "max_steps reached"
