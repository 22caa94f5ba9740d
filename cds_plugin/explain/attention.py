"""Attention-based views: rollout (label-agnostic) and attention x gradient rollout (label-specific).

`attention`: attention rollout (Abnar and Zuidema 2020). Each layer's head-averaged attention, with the
residual connection as 0.5 A + 0.5 I and rows renormalized, multiplied through the layers, tells how
much each position's final state draws on each input token. A token's relevance is its column averaged
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

Both need attention maps, which the fast attention kernels do not return: a second copy of the network
with eager attention shares the model's weights (no extra parameter memory) and is built once per model;
its maps are picked up by a hook into a thread-local slot, so concurrent explanations do not mix.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import RELEVANCE, Explanation, ExplanationError
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.registry import register

_EAGER: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_EAGER_LOCK = threading.Lock()
_CAPTURED = threading.local()


def _ask_attentions(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return args, {**kwargs, "output_attentions": True}


def _keep_attentions(module: nn.Module, args: Any, output: Any) -> None:
    _CAPTURED.attentions = getattr(output, "attentions", None)
    _CAPTURED.states = getattr(output, "last_hidden_state", None)


def eager_network(network: nn.Module) -> nn.Module:
    """A copy of `network` whose encoder uses eager attention and reports its maps, sharing `network`'s
    weights (the copy's own are freed). Built once per network; its forward is the model's forward."""
    with _EAGER_LOCK:
        shadow = _EAGER.get(network)
        if shadow is None:
            shadow = copy.deepcopy(network)
            shadow.load_state_dict(network.state_dict(), assign=True)
            encoder = shadow.encoder
            if getattr(encoder.config, "_attn_implementation", "eager") != "eager":
                encoder.set_attn_implementation("eager")
            encoder.register_forward_pre_hook(_ask_attentions, with_kwargs=True)
            encoder.register_forward_hook(_keep_attentions)
            shadow.eval()
            _EAGER[network] = shadow
    return shadow


def pooling_weights(network: nn.Module, states: torch.Tensor) -> np.ndarray:
    """How much each position's final state makes up the pooled vector: for max pooling, the share of
    hidden units whose maximum is at that position; for mean pooling, the same for every position."""
    length = states.shape[1]
    if getattr(network, "pooling", "mean") == "max":
        winners = states[0].detach().argmax(0).numpy()
        return np.bincount(winners, minlength=length) / len(winners)
    return np.full(length, 1.0 / length)


def attention_maps(
    inp: ExplainInput, grad: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray]:
    """Probabilities of every label (1, n_labels), each layer's attention (1, heads, L, L) and the
    pooling weight of every position."""
    network = eager_network(inp.engine.network)
    ids, mask = inp.tensors()
    _CAPTURED.attentions = _CAPTURED.states = None
    with torch.set_grad_enabled(grad):
        probs = torch.sigmoid(network(ids, mask) / inp.engine.model.temperature)
    maps, states = _CAPTURED.attentions, _CAPTURED.states
    _CAPTURED.attentions = _CAPTURED.states = None
    if not maps or states is None:
        raise ExplanationError("the model's encoder returned no attention maps")
    return probs, list(maps), pooling_weights(network, states)


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


def normalized(inp: ExplainInput, scores: np.ndarray) -> np.ndarray:
    """Relevance as shares of the facts' total (so scores of one explanation add to 1 over facts);
    [CLS] and [SEP] keep their relative value for views but count in no resource."""
    total = float(scores[inp.content_positions].sum()) if len(inp.content_positions) else 0.0
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
    scores = normalized(inp, rollout(maps, weights))
    per_fact = evidence.fact_scores(inp, scores)
    elapsed = time.perf_counter() - started
    return [
        evidence.build(
            inp,
            t,
            method="attention",
            settings=dict(settings),
            token_scores=scores,
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
        all_scores.append(normalized(inp, gradient_rollout(maps, grads, weights)))
    elapsed = time.perf_counter() - started
    return [
        evidence.build(
            inp,
            t,
            method="attention_gradient",
            settings=dict(settings),
            token_scores=scores,
            label_specific=True,
            score_unit=RELEVANCE,
            elapsed_s=elapsed / len(targets),
        )
        for t, scores in zip(targets, all_scores, strict=True)
    ]
