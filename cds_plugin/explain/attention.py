"""Attention-based views: rollout (label-agnostic) and attention x gradient rollout (label-specific).

`attention`: attention rollout (Abnar and Zuidema 2020). Each layer's head-averaged attention, with the
residual connection as 0.5 A + 0.5 I and rows renormalized, multiplied through the layers, tells how
much each position's final state draws on each input fact. A fact's relevance is its column averaged
over the rows with the pooling's weights: with max pooling, the share of hidden units whose maximum sits
at each position; with mean pooling, equal weights. It is the same
for every label: it shows what the model looked at for this patient, never why it rated one
consideration, and it does not pass the model-randomization check for the head (re-initialising the head
leaves it unchanged).

`attention_gradient`: the rule of Chefer, Gur and Wolf (2021, "Generic attention-model
explainability"): each layer's attention weighted by the gradient of the target label's probability,
heads averaged over the positive part, accumulated as R <- R + A_bar R from R = I. The identity's share
is removed before averaging rows (with the pooling weights), leaving the relevance that flowed through
attention. Label-specific, non-negative, not additive: scores are relevance, not probability units.

Both report relevance as shares: the scores of one explanation add up to 1 over the facts.

Both read the attention path only: the model's bag-of-facts path (network.py) adds to the logits without
attention, so neither view sees what that path contributes (integrated gradients and SHAP do). The
network returns its maps directly (`explain_forward`): nothing is hooked, so calls are thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import RELEVANCE, Explanation, ExplanationError
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.registry import register


def pooling_weights(states: torch.Tensor) -> np.ndarray:
    """How much each fact's final state makes up the max-pooled vector: the share of hidden units whose
    maximum is at that fact."""
    length = states.shape[1]
    winners = states[0].detach().argmax(0).numpy()
    return np.bincount(winners, minlength=length) / len(winners)


def attention_maps(
    inp: ExplainInput, grad: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray]:
    """Probabilities of every label (1, n_labels), each layer's attention (1, heads, L, L) and the
    pooling weight of every fact."""
    network = inp.engine.network
    with torch.set_grad_enabled(grad):
        batch = inp.batch()
        logits, maps, states = network.explain_forward(inp.embeddings(), batch.mask, batch.bag())
        probs = torch.sigmoid(logits / inp.engine.model.temperature)
    if not maps or states is None:
        raise ExplanationError("this model has no self-attention path to show")
    return probs, list(maps), pooling_weights(states)


def rollout(attentions: Sequence[torch.Tensor], weights: np.ndarray) -> np.ndarray:
    """Token relevance to the pooled output: rollout rows averaged with the pooling weights."""
    length = attentions[0].shape[-1]
    eye = torch.eye(length, dtype=torch.float64)
    joint = eye
    for layer in attentions:
        a = 0.5 * layer[0].detach().double().mean(0) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        joint = a @ joint
    return weights @ joint.numpy()


def gradient_rollout(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], weights: np.ndarray
) -> np.ndarray:
    """Chefer et al.'s relevance through attention, rows averaged with the pooling weights, identity
    removed."""
    length = attentions[0].shape[-1]
    eye = torch.eye(length, dtype=torch.float64)
    relevance = eye
    for a, g in zip(attentions, gradients, strict=True):
        weighted = (g[0].double() * a[0].detach().double()).clamp(min=0).mean(0)
        relevance = relevance + weighted @ relevance
    return weights @ (relevance - eye).numpy()


def normalized(scores: np.ndarray) -> np.ndarray:
    """Relevance as shares of the facts' total (so scores of one explanation add to 1 over facts)."""
    total = float(scores.sum())
    return scores / total if total > 0 else np.zeros_like(scores)


@register(
    "attention",
    description="attention rollout: what the model looked at (the same for every label)",
    label_specific=False,
)
def attention(inp: ExplainInput, targets: Sequence[Target], settings: Mapping[str, Any]) -> list[Explanation]:
    started = time.perf_counter()
    probs, maps, weights = attention_maps(inp)
    inp.share_probabilities(probs[0].numpy())
    scores = normalized(rollout(maps, weights))
    per_fact = evidence.fact_scores(inp, scores)
    elapsed = time.perf_counter() - started
    return [
        evidence.build(
            inp,
            t,
            method="attention",
            settings=dict(settings),
            per_fact=per_fact,
            label_specific=False,
            score_unit=RELEVANCE,
            elapsed_s=elapsed / len(targets),
        )
        for t in targets
    ]


@register(
    "attention_gradient",
    description="attention x gradient rollout (Chefer et al. 2021): relevance for one label",
    label_specific=True,
)
def attention_gradient(
    inp: ExplainInput, targets: Sequence[Target], settings: Mapping[str, Any]
) -> list[Explanation]:
    started = time.perf_counter()
    probs, maps, weights = attention_maps(inp, grad=True)
    inp.share_probabilities(probs[0].detach().numpy())
    all_scores = []
    for i, t in enumerate(targets):  # one forward, one backward per target
        grads = torch.autograd.grad(probs[0, t.label_index], maps, retain_graph=i < len(targets) - 1)
        all_scores.append(normalized(gradient_rollout(maps, grads, weights)))
    elapsed = time.perf_counter() - started
    return [
        evidence.build(
            inp,
            t,
            method="attention_gradient",
            settings=dict(settings),
            position_scores=scores,
            label_specific=True,
            score_unit=RELEVANCE,
            elapsed_s=elapsed / len(targets),
        )
        for t, scores in zip(targets, all_scores, strict=True)
    ]
