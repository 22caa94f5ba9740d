"""Integrated gradients (Sundararajan et al. 2017) with captum, per FHIR resource.

The path runs in the word-embedding space from a baseline input to the patient's input: the baseline
has [MASK] (or [PAD]) in place of every content token, with [CLS], [SEP], positions and the attention
mask kept, so it is "the same input with every fact blanked". The function explained is the target
label's calibrated probability, sigmoid(logit / temperature), one label at a time (never a softmax
across labels), so scores are in probability units and add up to F(x) - F(baseline).

Gauss-Legendre quadrature: the path integral of a smooth function converges far faster than with
captum's Riemann rules, whose trapezoid error floor is about 1/n. The completeness error
|sum(scores) - (F(x) - F(baseline))| / |F(x) - F(baseline)| is measured on every explanation; above
`recompute_above` the target is recomputed with twice the steps, up to `max_steps`, then flagged.

Several targets share the work: one forward for F(x) and F(baseline) of every label, and one captum
call where each target is a row of the batch, so the interpolation steps of all targets run in the
same batched forward and backward passes (rows never interact, so targets never mix).

Thread-safe: the embedding layer captum hooks is a private module made per call that shares the word
embedding weights; the model's own modules get no hooks, so concurrent `assess` calls are unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import PROBABILITY, Explanation, ExplanationError
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.registry import register

QUADRATURE = "gausslegendre"
#: Below this |F(x) - F(baseline)| the completeness error is measured against it instead: a target the
#: facts barely move (under 0.1 percentage point) has no meaningful relative error.
DELTA_FLOOR = 1e-3
DEFAULTS: dict[str, Any] = {
    "steps": 64,
    "max_steps": 256,
    "baseline": "mask",
    "internal_batch_size": 64,
    "recompute_above": 0.05,
}
BASELINES = ("mask", "pad")


class _WordEmbeddings(nn.Module):
    """The model's word embeddings as a private module (same weights) for captum to hook."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.weight)


def probability_function(
    inp: ExplainInput, layer: nn.Module
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ids, mask -> calibrated probability of every label, through `layer` for the word embeddings."""
    network = inp.engine.network
    temperature = inp.engine.model.temperature

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = network(attention_mask=attention_mask, inputs_embeds=layer(input_ids))
        return torch.sigmoid(logits / temperature)

    return forward


def baseline_ids(inp: ExplainInput, kind: str) -> torch.Tensor:
    """The input with every content token replaced by [MASK] or [PAD]; [CLS] and [SEP] kept."""
    ids, _ = inp.tensors()
    tok = inp.engine.tokenizer
    base = ids.clone()
    base[0, torch.from_numpy(inp.content_positions)] = tok.mask_id if kind == "mask" else tok.pad_id
    return base


def completeness_error(total: float, f_x: float, f_baseline: float) -> float:
    """|sum(attributions) - (F(x) - F(baseline))| relative to |F(x) - F(baseline)| (floored)."""
    delta = f_x - f_baseline
    return abs(total - delta) / max(abs(delta), DELTA_FLOOR)


def _check(settings: Mapping[str, Any]) -> None:
    if settings["baseline"] not in BASELINES:
        raise ExplanationError(f"integrated_gradients: baseline must be one of {', '.join(BASELINES)}")
    for name in ("steps", "max_steps", "internal_batch_size"):
        if not isinstance(settings[name], int) or settings[name] < 1:
            raise ExplanationError(f"integrated_gradients: {name} must be a positive integer")
    if settings["max_steps"] < settings["steps"]:
        raise ExplanationError("integrated_gradients: max_steps must be at least steps")


def attribute(
    inp: ExplainInput,
    labels: Sequence[int],
    steps: int,
    baseline: str = "mask",
    internal_batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token attributions (len(labels), length), F(x) and F(baseline) of every label.

    One captum call for all `labels`: row i of the batch explains labels[i].
    """
    layer = _WordEmbeddings(inp.engine.network.embeddings.weight)
    forward = probability_function(inp, layer)
    ids, mask = inp.tensors()
    base = baseline_ids(inp, baseline)
    with torch.no_grad():
        ends = forward(torch.cat([ids, base]), mask.expand(2, -1)).numpy()
    inp.share_probabilities(ends[0])
    k = len(labels)
    lig = LayerIntegratedGradients(forward, layer)
    with torch.enable_grad():
        attributions = lig.attribute(
            ids.expand(k, -1),
            baselines=base.expand(k, -1),
            target=list(labels),
            additional_forward_args=(mask.expand(k, -1),),
            n_steps=steps,
            method=QUADRATURE,
            internal_batch_size=max(internal_batch_size, 2 * k),
        )
    return attributions.sum(-1).detach().double().numpy(), ends[0], ends[1]


@register(
    "integrated_gradients",
    description="integrated gradients from a blanked input, in probability units (label-specific)",
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
                token_scores=scores,
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
