"""SHAP over whole FHIR facts (Partition explainer, Owen values), on demand.

The players are the facts of the model input (one per position): removing a fact drops its position
from the input (or, with `removal="pad"`, hides it under a zero attention mask). The partition tree
groups facts of one resource, then resources of one FHIR resource type, so coalitions follow the
record's structure (resource type -> resource -> fact), and a limited budget still credits whole groups
first.

Scores are Shapley (Owen) values of the target's calibrated probability, in probability units; they add
up to F(all facts) - F(no fact). Cost: up to `max_evals` forward passes per target (batched); model
outputs are cached across the targets of one call, so the shared top of the tree is evaluated once.

shap compiles its numba helpers on first use (10-20 s): a server calls `warm_up()` at start, off the
request path. The Partition explainer breaks ties with numpy's global random generator; it is seeded
from the settings for the call and restored afterwards, so results are reproducible.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cds_plugin.explain import evidence
from cds_plugin.explain.explanation import PROBABILITY, Explanation, ExplanationError
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.explain.integrated_gradients import completeness_error
from cds_plugin.explain.registry import register

DEFAULTS: dict[str, Any] = {"max_evals": 500, "batch_size": 64, "removal": "drop", "seed": 0}
REMOVALS = ("drop", "pad")


def partition_tree(inp: ExplainInput) -> np.ndarray:
    """A scipy-style linkage over the kept facts (leaves in input order): facts of a resource merge
    first (distance 1), then resources of a type (2), then types (3); each level balanced."""
    segments = inp.linearization.segments
    groups: dict[str, dict[str, list[int]]] = {}
    for leaf, index in enumerate(inp.position_segments):
        segment = segments[index]
        groups.setdefault(segment.resource_type, {}).setdefault(segment.reference, []).append(leaf)
    n = inp.length
    rows: list[list[float]] = []
    size = dict.fromkeys(range(n), 1)

    def merge(nodes: list[int], distance: float) -> int:
        while len(nodes) > 1:
            merged = []
            for i in range(0, len(nodes) - 1, 2):
                a, b = nodes[i], nodes[i + 1]
                node = n + len(rows)
                size[node] = size[a] + size[b]
                rows.append([a, b, distance, size[node]])
                merged.append(node)
            if len(nodes) % 2:
                merged.append(nodes[-1])
            nodes = merged
        return nodes[0]

    types = [merge([merge(leaves, 1.0) for leaves in by_ref.values()], 2.0) for by_ref in groups.values()]
    merge(types, 3.0)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


class FactModel:
    """Presence vectors over the kept facts -> probabilities of the targets, cached by coalition."""

    def __init__(self, inp: ExplainInput, labels: Sequence[int], removal: str, batch_size: int) -> None:
        self.inp = inp
        self.labels = list(labels)
        self.removal = removal
        self.batch_size = batch_size
        self.cache: dict[bytes, np.ndarray] = {}
        self.evaluations = 0

    def _batch(self, present: np.ndarray):  # type: ignore[no-untyped-def]
        engine = self.inp.engine
        if self.removal == "pad":
            batch = engine.batch([self.inp.encoded] * len(present))
            batch.mask = batch.mask & torch.from_numpy(np.asarray(present, dtype=bool))
            return batch
        return engine.batch([self.inp.encoded.select(keep) for keep in present])

    @torch.no_grad()
    def _evaluate(self, present: np.ndarray) -> np.ndarray:
        engine = self.inp.engine
        out = []
        for k in range(0, len(present), self.batch_size):
            batch = self._batch(present[k : k + self.batch_size])
            logits = engine.network(**batch.embed_args(), mask=batch.mask).numpy()
            out.append(engine.probabilities(logits)[:, self.labels])
        self.evaluations += len(present)
        return np.concatenate(out).astype(np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, targets) of presence rows `x` (values > 0.5 mean present)."""
        present = np.asarray(x) > 0.5
        keys = [row.tobytes() for row in present]
        new = [key for key in dict.fromkeys(keys) if key not in self.cache]
        if new:
            rows = np.array([np.frombuffer(key, dtype=bool) for key in new])
            for key, values in zip(new, self._evaluate(rows), strict=True):
                self.cache[key] = values
        return np.array([self.cache[key] for key in keys])

    def column(self, j: int):  # type: ignore[no-untyped-def]
        return lambda x: self(x)[:, j]


def _check(settings: Mapping[str, Any]) -> None:
    if settings["removal"] not in REMOVALS:
        raise ExplanationError(f"shap: removal must be one of {', '.join(REMOVALS)}")
    if not isinstance(settings["max_evals"], int) or settings["max_evals"] < 4:
        raise ExplanationError("shap: max_evals must be an integer of at least 4")
    if not isinstance(settings["batch_size"], int) or settings["batch_size"] < 1:
        raise ExplanationError("shap: batch_size must be a positive integer")


def _shap():  # type: ignore[no-untyped-def]
    """shap, imported on first use (4 s); its plotting module's deprecation noise silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import shap
    return shap


def owen_values(
    model: FactModel, tree: np.ndarray, j: int, n: int, max_evals: int, seed: int, batch_size: int
) -> np.ndarray:
    """Owen values of target column j over n facts with shap's Partition explainer."""
    shap = _shap()

    background = np.zeros((1, n))
    if n == 1:  # a single player takes the whole difference
        return model(np.ones((1, 1)))[:, j] - model(background)[:, j]
    masker = shap.maskers.Partition(background, clustering=tree)
    explainer = shap.explainers.Partition(model.column(j), masker)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        result = explainer(np.ones((1, n)), max_evals=max_evals, batch_size=batch_size, silent=True)
    finally:
        np.random.set_state(state)
    return np.asarray(result.values[0], dtype=np.float64)


@register(
    "shap",
    description="Shapley (Owen) values over whole facts, in probability units; hundreds of forwards",
    label_specific=True,
    defaults=DEFAULTS,
)
def shap_facts(
    inp: ExplainInput, targets: Sequence[Target], settings: Mapping[str, Any]
) -> list[Explanation]:
    _check(settings)
    started = time.perf_counter()
    n = inp.length
    model = FactModel(inp, [t.label_index for t in targets], settings["removal"], settings["batch_size"])
    full = model(np.ones((1, n)))[0]
    empty = model(np.zeros((1, n)))[0]
    tree = partition_tree(inp) if n > 1 else np.zeros((0, 4))
    values = []
    for j in range(len(targets)):
        if n == 0:
            values.append(np.zeros(0))
            continue
        values.append(
            owen_values(model, tree, j, n, settings["max_evals"], settings["seed"], settings["batch_size"])
        )
    elapsed = time.perf_counter() - started
    out = []
    for j, target in enumerate(targets):
        per_fact = {index: float(v) for index, v in zip(inp.position_segments, values[j], strict=True)}
        error = completeness_error(float(values[j].sum()), float(full[j]), float(empty[j]))
        out.append(
            evidence.build(
                inp,
                target,
                method="shap",
                settings={**settings, "evaluations_all_targets": model.evaluations, "facts": n},
                per_fact=per_fact,
                label_specific=True,
                score_unit=PROBABILITY,
                f_x=float(full[j]),
                f_baseline=float(empty[j]),
                completeness_error=error,
                elapsed_s=elapsed / len(targets),
            )
        )
    return out


def warm_up() -> float:
    """Import shap and compile its numba helpers on a toy problem; returns the seconds it took.

    Call once per process at start (off the request path): the first real SHAP explanation otherwise
    pays 10-20 s of compilation.
    """
    started = time.perf_counter()
    shap = _shap()
    tree = np.array([[0, 1, 1, 2], [2, 3, 1, 2], [4, 5, 2, 4]], dtype=np.float64)
    masker = shap.maskers.Partition(np.zeros((1, 4)), clustering=tree)
    explainer = shap.explainers.Partition(lambda x: x.sum(1), masker)
    explainer(np.ones((1, 4)), max_evals=20, silent=True)
    return time.perf_counter() - started
