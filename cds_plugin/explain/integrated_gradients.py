"""Integrated gradients (Sundararajan et al. 2017) over fact embeddings, per FHIR resource.

The path runs in the fact-embedding space (the network's post-norm embeddings, one per fact, and the
presence gate that multiplies each fact's code weight in the bag path) from a baseline to the patient's
input, with the set of positions and the attention mask kept: `mask` puts the embedding of an empty
[MASK] fact (no code, value, time or kind) at every position, `pad` the padding fact's, `zero` the zero
vector; the gates go from 0 to 1 with the embeddings. The function explained is the target label's
calibrated probability, sigmoid(logit / temperature), one label at a time (never a softmax across
labels), so scores are in probability units and add up to F(x) - F(baseline). `mask` is the default: it
was the most faithful of the three on validation patients, and `zero` six times costlier
(docs/explanations.md, "Baseline").

Quadrature: composite Gauss-Legendre, adaptive per target. The integrand changes abruptly along the
path (the max-pool's argmax switches, among others), so one high-order rule over [0, 1] converges
slowly (64 nodes still left 2-9 % of targets above 1 %), while a few nodes on each of several
intervals, with the intervals that hold the error split, converge fast. The error is
known without a reference: on every interval [a, b] the scores must add up to F(b) - F(a) (completeness
holds on each piece of the path), and F at the interval ends costs a forward pass without gradient.
Each round a target whose overall completeness error |sum(scores) - (F(x) - F(baseline))| /
|F(x) - F(baseline)| is above `tolerance` has its worst intervals halved, until `max_steps` gradient
evaluations for it; other targets stop there. With one interval and no refinement this is plain
Gauss-Legendre, exactly what captum computes with `method="gausslegendre"`.

Several targets share the work: each batch of interpolation points goes forward once and each target
that still needs it takes one backward pass of that graph (`retain_graph`); a batched backward through
`torch.func`-style vmapped vector-Jacobian products was measured slower on CPU (benchmarks/explain_ig.py).

`budget_s` bounds the time: before each batch the cost is predicted from what the call has measured so
far. When the first pass would end past the budget, `ExplanationTimeout` is raised, so a hook call can
answer on time with a cheaper method; when a refinement would, it stops there if every target's error
is within `budget_tolerance` (5 %: the explanation says so and states its error), else it raises too.

Thread-safe: nothing is hooked or changed on the model; every call builds its own tensors.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import PROBABILITY, Explanation, ExplanationError, ExplanationTimeout
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.registry import register

QUADRATURE = "gausslegendre"
#: Below this |F(x) - F(baseline)| the completeness error is measured against it instead: a target the
#: facts barely move (under 0.1 percentage point) has no meaningful relative error.
DELTA_FLOOR = 1e-3
DEFAULTS: dict[str, Any] = {
    "steps": 8,  # Gauss-Legendre nodes of the first pass, spread over `intervals` equal intervals
    "intervals": 4,
    "max_steps": 128,  # most gradient evaluations per target, refinements included
    "tolerance": 0.01,  # completeness error above which a target's worst intervals are halved
    "baseline": "mask",
    "internal_batch_size": 64,
    "budget_s": None,  # seconds; None: no limit
    "budget_tolerance": 0.05,  # completeness error accepted when the budget stops the refinement
}
BASELINES = ("mask", "pad", "zero")
#: A backward pass costs about this many forward passes of the same batch (measured on CPU, used only to
#: predict a batch's time against `budget_s` before its first backward has been timed).
BACKWARD_COST = 1.4

Interval = tuple[float, float]


def completeness_error(total: float, f_x: float, f_baseline: float) -> float:
    """|sum(attributions) - (F(x) - F(baseline))| relative to |F(x) - F(baseline)| (floored)."""
    delta = f_x - f_baseline
    return abs(total - delta) / max(abs(delta), DELTA_FLOOR)


def baseline_embeddings(inp: ExplainInput, kind: str) -> torch.Tensor:
    """The baseline fact embeddings (1, length, hidden): an empty [MASK] fact everywhere (`mask`), the
    padding fact's embedding (`pad`), or zeros (`zero`)."""
    x = inp.embeddings()
    if kind == "zero":
        return torch.zeros_like(x)
    from cds_plugin.model.facts import MASK, PAD

    with torch.no_grad():
        return inp.engine.network.embed_blank(MASK if kind == "mask" else PAD, tuple(x.shape[:2]))


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and weights summing to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def _check(settings: Mapping[str, Any]) -> None:
    if settings["baseline"] not in BASELINES:
        raise ExplanationError(f"integrated_gradients: baseline must be one of {', '.join(BASELINES)}")
    for name in ("steps", "intervals", "max_steps", "internal_batch_size"):
        if not isinstance(settings[name], int) or isinstance(settings[name], bool) or settings[name] < 1:
            raise ExplanationError(f"integrated_gradients: {name} must be a positive integer")
    if settings["steps"] % settings["intervals"]:
        raise ExplanationError("integrated_gradients: steps must be a multiple of intervals")
    if settings["max_steps"] < settings["steps"]:
        raise ExplanationError("integrated_gradients: max_steps must be at least steps")
    tolerance = settings["tolerance"]
    if not isinstance(tolerance, (int, float)) or tolerance <= 0:
        raise ExplanationError("integrated_gradients: tolerance must be a positive number")
    if not isinstance(settings["budget_tolerance"], (int, float)) or settings["budget_tolerance"] <= 0:
        raise ExplanationError("integrated_gradients: budget_tolerance must be a positive number")
    budget = settings["budget_s"]
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise ExplanationError("integrated_gradients: budget_s must be a positive number of seconds")


@dataclass
class _Clock:
    """Predicts each batch's time from what this call measured and refuses what would overrun."""

    budget_s: float | None
    started: float = field(default_factory=time.perf_counter)
    forward_row_s: float = 0.0  # one interpolation point forward, without gradient
    backward_ratio: float = BACKWARD_COST  # a backward over a forward, once measured

    def forward_measured(self, rows: int, seconds: float) -> None:
        # the latest batch is the best guess of the next: the first one of a call also pays for set-up
        self.forward_row_s = seconds / max(rows, 1)

    def check(self, rows: int, backwards: int) -> None:
        if self.budget_s is None:
            return
        predicted = rows * self.forward_row_s * (1 + self.backward_ratio * backwards)
        if time.perf_counter() - self.started + predicted > self.budget_s:
            raise ExplanationTimeout(
                f"integrated gradients would take longer than the {self.budget_s:g} s budget"
            )


class _Path:
    """The interpolation path of one input: probabilities at points, and gradients over intervals."""

    def __init__(self, inp: ExplainInput, baseline: str, batch_size: int, clock: _Clock) -> None:
        self.inp = inp
        self.x = inp.embeddings()
        self.base = baseline_embeddings(inp, baseline)
        self.diff = self.x - self.base
        self.diff64 = self.diff.double()
        self.length = self.x.shape[1]
        self.batch_size = batch_size
        self.clock = clock
        self.batch = inp.batch()

    def _probabilities(self, points: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        network = self.inp.engine.network
        logits = network.forward_embeds(
            points, self.batch.mask.expand(n, -1), self.batch.bag().expand(n), gates
        )
        return torch.sigmoid(logits / self.inp.engine.model.temperature)

    def _points(self, alphas: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.tensor(alphas, dtype=self.x.dtype)
        return self.base + a[:, None, None] * self.diff, a[:, None].expand(-1, self.length).clone()

    def values(self, alphas: Sequence[float]) -> np.ndarray:
        """Probabilities of every label (len(alphas), labels) at the path points, without gradient."""
        out = []
        for k in range(0, len(alphas), self.batch_size):
            chunk = np.asarray(alphas[k : k + self.batch_size], dtype=np.float64)
            self.clock.check(len(chunk), 0)
            started = time.perf_counter()
            with torch.no_grad():
                out.append(self._probabilities(*self._points(chunk)).double().numpy())
            self.clock.forward_measured(len(chunk), time.perf_counter() - started)
        return np.concatenate(out)

    def integrate(
        self, intervals: Sequence[Interval], nodes: int, wanted: Mapping[int, set[Interval]]
    ) -> dict[tuple[int, Interval], np.ndarray]:
        """Per label and interval it wants, the Gauss-Legendre integral of the gradient along the path
        over that interval: one score per fact (the interval's share of the attribution)."""
        unit_nodes, unit_weights = gauss_legendre(nodes)
        alphas = np.concatenate([a + (b - a) * unit_nodes for a, b in intervals])
        weights = np.concatenate([(b - a) * unit_weights for a, b in intervals])
        owner = np.repeat(np.arange(len(intervals)), nodes)
        sums: dict[tuple[int, Interval], np.ndarray] = {}
        for k in range(0, len(alphas), self.batch_size):
            rows = slice(k, k + self.batch_size)
            chunk_intervals = {intervals[i] for i in owner[rows]}
            labels = [label for label, want in wanted.items() if want & chunk_intervals]
            self.clock.check(len(alphas[rows]), len(labels))
            started = time.perf_counter()
            points, gates = self._points(alphas[rows])
            points.requires_grad_(True)
            gates.requires_grad_(True)
            w = torch.tensor(weights[rows], dtype=torch.float64)[:, None]
            with torch.enable_grad():
                probs = self._probabilities(points, gates)
                forward_s = time.perf_counter() - started
                for n, label in enumerate(labels):
                    grad_x, grad_g = torch.autograd.grad(
                        probs[:, label].sum(), (points, gates), retain_graph=n < len(labels) - 1
                    )
                    along = (((grad_x.double() * self.diff64).sum(-1) + grad_g.double()) * w).numpy()
                    for row, i in enumerate(owner[rows]):
                        key = (label, intervals[i])
                        if intervals[i] in wanted[label]:
                            sums[key] = sums.get(key, 0.0) + along[row]
            if labels:
                backward_s = time.perf_counter() - started - forward_s
                self.clock.backward_ratio = backward_s / len(labels) / max(forward_s, 1e-9)
            self.clock.forward_measured(len(alphas[rows]), forward_s)
        return sums


@dataclass
class _Target:
    """One label's state: its intervals with their scores, and the gradient evaluations spent."""

    label: int
    parts: dict[Interval, np.ndarray] = field(default_factory=dict)
    steps_used: int = 0
    error: float = float("inf")

    def total(self) -> np.ndarray:
        return np.sum(list(self.parts.values()), axis=0)


def attribute(
    inp: ExplainInput,
    labels: Sequence[int],
    settings: Mapping[str, Any],
) -> tuple[list[_Target], np.ndarray, np.ndarray, int, bool]:
    """Adaptive attributions of `labels` (see the module docstring): each target's state, the
    probabilities of every label at the input and at the baseline, the rounds run, and whether the
    time budget stopped the refinement."""
    clock = _Clock(settings["budget_s"])
    path = _Path(inp, settings["baseline"], settings["internal_batch_size"], clock)
    nodes = settings["steps"] // settings["intervals"]
    edges = np.linspace(0.0, 1.0, settings["intervals"] + 1)
    knots = [float(e) for e in edges]
    first = path.values(knots)
    inp.share_probabilities(first[-1])
    value = {a: first[i] for i, a in enumerate(knots)}
    initial = [(float(a), float(b)) for a, b in itertools.pairwise(edges)]
    targets = {label: _Target(label) for label in dict.fromkeys(labels)}
    wanted = {label: set(initial) for label in targets}
    replaced: dict[int, list[Interval]] = {}  # intervals whose halves are being computed
    rounds = 0
    while wanted:
        todo = sorted(set().union(*wanted.values()))
        try:
            new_knots = sorted({(a + b) / 2 for chosen in replaced.values() for a, b in chosen} - set(value))
            if new_knots:
                value.update(zip(new_knots, path.values(new_knots), strict=True))
            sums = path.integrate(todo, nodes, wanted)
        except ExplanationTimeout:
            # the first pass must finish; a refinement may stop short when the error is acceptable
            if rounds == 0 or any(targets[label].error > settings["budget_tolerance"] for label in wanted):
                raise
            return [targets[label] for label in labels], value[1.0], value[0.0], rounds, True
        rounds += 1
        for label, chosen in replaced.items():
            for interval in chosen:
                del targets[label].parts[interval]
        for (label, interval), scores in sums.items():
            targets[label].parts[interval] = scores
        for label, want in wanted.items():
            targets[label].steps_used += nodes * len(want)
        replaced = {}
        for label in wanted:
            t = targets[label]
            t.error = completeness_error(float(t.total().sum()), value[1.0][label], value[0.0][label])
            room = (settings["max_steps"] - t.steps_used) // (2 * nodes)
            if t.error > settings["tolerance"] and room > 0:
                replaced[label] = _worst(t, value, room)
        wanted = {
            label: {half for a, b in chosen for half in ((a, (a + b) / 2), ((a + b) / 2, b))}
            for label, chosen in replaced.items()
        }
    return [targets[label] for label in labels], value[1.0], value[0.0], rounds, False


def unfinished_because(target: _Target, settings: Mapping[str, Any], stopped_by_budget: bool) -> str:
    """Why a target's error is still above the tolerance: it had no room for another halving within
    `max_steps`, or the time budget stopped the call's refinement before it could use that room."""
    nodes = settings["steps"] // settings["intervals"]
    if not stopped_by_budget or (settings["max_steps"] - target.steps_used) // (2 * nodes) <= 0:
        return "max_steps reached"
    return "the time budget stopped the refinement"


def _worst(target: _Target, value: Mapping[float, np.ndarray], room: int) -> list[Interval]:
    """The intervals holding most of the target's error: largest local completeness error first, until
    half of the total local error is covered (at most `room` of them)."""
    label = target.label
    local = {
        (a, b): abs(float(s.sum()) - (value[b][label] - value[a][label]))
        for (a, b), s in target.parts.items()
    }
    total = sum(local.values())
    chosen, covered = [], 0.0
    for interval in sorted(local, key=local.__getitem__, reverse=True)[:room]:
        chosen.append(interval)
        covered += local[interval]
        if covered >= total / 2:
            break
    return chosen


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
    states, f_x, f_b, rounds, stopped = attribute(inp, [t.label_index for t in targets], settings)
    elapsed = time.perf_counter() - started
    out = []
    for target, state in zip(targets, states, strict=True):
        warnings = []
        if state.error > settings["tolerance"]:
            why = unfinished_because(state, settings, stopped)
            warnings.append(
                f"completeness error {state.error:.1%} is above {settings['tolerance']:.0%} after "
                f"{state.steps_used} steps ({why}): the scores do not add up to the change in probability"
            )
        out.append(
            evidence.build(
                inp,
                target,
                method="integrated_gradients",
                settings={
                    **settings,
                    "steps_used": state.steps_used,
                    "intervals_used": len(state.parts),
                    "rounds": rounds,
                    "stopped_by_budget": stopped,
                    "quadrature": QUADRATURE,
                },
                position_scores=state.total(),
                label_specific=True,
                score_unit=PROBABILITY,
                f_x=float(f_x[target.label_index]),
                f_baseline=float(f_b[target.label_index]),
                completeness_error=state.error,
                warnings=warnings,
                elapsed_s=elapsed / len(targets),
            )
        )
    return out
