"""Integrated gradients (Sundararajan et al. 2017) over fact embeddings, per FHIR resource.

The path runs in the fact-embedding space (the network's post-norm embeddings, one per fact, and the
presence gate that multiplies each fact's code weight in the bag path) from a baseline to the patient's
input, with the set of positions and the attention mask kept: `mask` puts the embedding of an empty
[MASK] fact (no code, value, time or kind) at every position, `zero` the zero vector; the gates go from
0 to 1 with the embeddings. The function explained is the target label's calibrated probability,
sigmoid(logit / temperature), one label at a time (never a softmax across labels), so scores are in
probability units and add up to F(x) - F(baseline).

Gauss-Legendre quadrature: the path integral of a smooth function converges far faster than with a
Riemann rule. The completeness error |sum(scores) - (F(x) - F(baseline))| / |F(x) - F(baseline)| is
measured on every explanation; above `recompute_above` the target is recomputed with twice the steps,
up to `max_steps`, then flagged.

Several targets share the work: the interpolation batch goes forward once and each target's gradients
come from a backward pass of that one graph.

Thread-safe: nothing is hooked or changed on the model; every call builds its own tensors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import PROBABILITY, Explanation, ExplanationError
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.registry import register

QUADRATURE = "gausslegendre"
#: Below this |F(x) - F(baseline)| the completeness error is measured against it instead: a target the
#: facts barely move (under 0.1 percentage point) has no meaningful relative error.
DELTA_FLOOR = 1e-3
DEFAULTS: dict[str, Any] = {
    "steps": 32,
    "max_steps": 256,
    "baseline": "mask",
    "internal_batch_size": 64,
    "recompute_above": 0.01,
}
BASELINES = ("mask", "zero")


def completeness_error(total: float, f_x: float, f_baseline: float) -> float:
    """|sum(attributions) - (F(x) - F(baseline))| relative to |F(x) - F(baseline)| (floored)."""
    delta = f_x - f_baseline
    return abs(total - delta) / max(abs(delta), DELTA_FLOOR)


def baseline_embeddings(inp: ExplainInput, kind: str) -> torch.Tensor:
    """The baseline fact embeddings (1, length, hidden): an empty [MASK] fact everywhere, or zeros."""
    x = inp.embeddings()
    if kind == "zero":
        return torch.zeros_like(x)
    from cds_plugin.model.facts import MASK

    network = inp.engine.network
    ids = torch.full(x.shape[:2], MASK, dtype=torch.long)
    zeros = torch.zeros_like(ids)
    with torch.no_grad():
        return network.embed(ids, zeros, zeros, zeros, zeros)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and weights summing to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def _check(settings: Mapping[str, Any]) -> None:
    if settings["baseline"] not in BASELINES:
        raise ExplanationError(f"integrated_gradients: baseline must be one of {', '.join(BASELINES)}")
    for name in ("steps", "max_steps", "internal_batch_size"):
        if not isinstance(settings[name], int) or settings[name] < 1:
            raise ExplanationError(f"integrated_gradients: {name} must be a positive integer")
    if settings["max_steps"] < settings["steps"]:
        raise ExplanationError("integrated_gradients: max_steps must be at least steps")


def _probabilities(inp: ExplainInput, embeds: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    batch = inp.batch()
    n = embeds.shape[0]
    logits = inp.engine.network.forward_embeds(embeds, batch.mask.expand(n, -1), batch.bag().expand(n), gates)
    return torch.sigmoid(logits / inp.engine.model.temperature)


def attribute(
    inp: ExplainInput,
    labels: Sequence[int],
    steps: int,
    baseline: str = "mask",
    internal_batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fact attributions (len(labels), length), F(x) and F(baseline) of every label.

    Each chunk of interpolation points goes forward once; each label's gradient is one backward pass of
    that graph (`retain_graph` between them).
    """
    x = inp.embeddings()
    base = baseline_embeddings(inp, baseline)
    length = x.shape[1]
    with torch.no_grad():
        ends = _probabilities(inp, torch.cat([x, base]), torch.tensor([[1.0], [0.0]]).expand(2, length))
        ends = ends.double().numpy()
    inp.share_probabilities(ends[0])
    alphas, weights = gauss_legendre(steps)
    diff = x - base
    total = torch.zeros(len(labels), length, dtype=torch.float64)
    for k in range(0, steps, internal_batch_size):
        a = torch.tensor(alphas[k : k + internal_batch_size], dtype=x.dtype)
        w = torch.tensor(weights[k : k + internal_batch_size], dtype=torch.float64)[:, None]
        points = (base + a[:, None, None] * diff).detach().requires_grad_(True)
        gates = a[:, None].expand(-1, length).clone().requires_grad_(True)
        with torch.enable_grad():
            probs = _probabilities(inp, points, gates)
            for row, label in enumerate(labels):
                grad_x, grad_g = torch.autograd.grad(
                    probs[:, label].sum(), (points, gates), retain_graph=row < len(labels) - 1
                )
                along = (grad_x.double() * diff.double()).sum(-1) + grad_g.double()
                total[row] += (along * w).sum(0)
    return total.numpy(), ends[0], ends[1]


@register(
    "integrated_gradients",
    description="integrated gradients from empty facts, in probability units (label-specific)",
    label_specific=True,
    defaults=DEFAULTS,
)
def integrated_gradients(
    inp: ExplainInput, targets: Sequence[Target], settings: Mapping[str, Any]
) -> list[Explanation]:
    _check(settings)
    started = time.perf_counter()
    labels = [t.label_index for t in targets]
    results: dict[int, tuple[np.ndarray, float, int]] = {}
    pending = list(range(len(targets)))
    steps = settings["steps"]
    f_x = f_b = np.zeros(0)
    while pending:
        scores, f_x, f_b = attribute(
            inp, [labels[i] for i in pending], steps, settings["baseline"], settings["internal_batch_size"]
        )
        again = []
        for row, i in enumerate(pending):
            label = labels[i]
            error = completeness_error(float(scores[row].sum()), float(f_x[label]), float(f_b[label]))
            results[i] = (scores[row], error, steps)
            if error > settings["recompute_above"] and steps < settings["max_steps"]:
                again.append(i)
        pending = again
        steps = min(steps * 2, settings["max_steps"])
    elapsed = time.perf_counter() - started
    out = []
    for i, target in enumerate(targets):
        scores, error, used = results[i]
        warnings = []
        if error > settings["recompute_above"]:
            warnings.append(
                f"completeness error {error:.1%} is above {settings['recompute_above']:.0%} after {used} "
                "steps: the scores do not add up to the change in probability"
            )
        out.append(
            evidence.build(
                inp,
                target,
                method="integrated_gradients",
                settings={**settings, "steps_used": used, "quadrature": QUADRATURE},
                position_scores=scores,
                label_specific=True,
                score_unit=PROBABILITY,
                f_x=float(f_x[target.label_index]),
                f_baseline=float(f_b[target.label_index]),
                completeness_error=error,
                warnings=warnings,
                elapsed_s=elapsed / len(targets),
            )
        )
    return out
