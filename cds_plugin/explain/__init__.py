"""Explanations: which of the patient's own FHIR resources moved a consideration, and by how much.

    engine = Engine.load()
    assessment = engine.assess(bundle)
    top = assessment.considerations[:3]
    explanations = engine.explain(assessment, top)      # integrated gradients, the three share work
    explanations[0].evidence[0].reference                 # e.g. "Observation/abc"

Methods by name (`methods()`): `integrated_gradients` (default; additive, probability units, with its
completeness error), `attention` (rollout: what the model looked at, the same for every label),
`attention_gradient` (label-specific relevance) and `shap` (Owen values over whole facts, on demand:
hundreds of forward passes). See docs/explanations.md for how to read them and how faithful they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from cds_plugin.explain import attention, integrated_gradients, shap_facts  # noqa: F401  (registers them)
from cds_plugin.explain.explanation import (
    FORMAT_VERSION,
    Evidence,
    ExplainedTarget,
    Explanation,
    ExplanationError,
    FactScore,
)
from cds_plugin.explain.inputs import ExplainInput, Target, UnknownTargetError, prepare, resolve_targets
from cds_plugin.explain.registry import get, methods, register
from cds_plugin.explain.shap_facts import warm_up

if TYPE_CHECKING:
    from cds_plugin.model.engine import Engine

DEFAULT_METHOD = "integrated_gradients"

__all__ = [
    "DEFAULT_METHOD",
    "FORMAT_VERSION",
    "Evidence",
    "ExplainInput",
    "ExplainedTarget",
    "Explanation",
    "ExplanationError",
    "FactScore",
    "Target",
    "UnknownTargetError",
    "explain",
    "methods",
    "prepare",
    "register",
    "run",
    "warm_up",
]


def run(
    inp: ExplainInput, targets: Sequence[Target], method: str = DEFAULT_METHOD, **settings: Any
) -> list[Explanation]:
    """Run one method on a prepared input (several methods on one input share its preparation)."""
    chosen = get(method)
    return chosen.run(inp, list(targets), chosen.settings(settings))


def explain(
    engine: Engine,
    source: Any,
    target: Any,
    method: str = DEFAULT_METHOD,
    as_of: datetime | date | None = None,
    **settings: Any,
) -> Explanation | list[Explanation]:
    """Explain `target` (a Consideration, a code, or a list of them) for the patient in `source`.

    `source` is an Assessment (its input is reused), a PatientRecord or any FHIR input the Engine
    reads. One Explanation for a single target, a list (same order) for a list; several targets share
    the input's preparation and forward work. `settings` override the method's defaults.
    """
    chosen = get(method)
    resolved = chosen.settings(settings)
    targets, single = resolve_targets(engine, target)
    inp = prepare(engine, source, as_of)
    out = chosen.run(inp, targets, resolved)
    return out[0] if single else out
