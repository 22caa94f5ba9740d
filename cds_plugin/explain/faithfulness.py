"""How far explanations can be trusted, measured on validation patients (`cds-plugin evaluate-explanations`).

For each patient (one validation example, as the model was evaluated) and its top targets, every method
ranks the patient's FHIR resources; then the resources are removed from the record itself and the
record is linearized, encoded and predicted again (ERASER, DeYoung et al. 2020), so a removed resource
frees room for facts the budget had left out, as it would in the EHR:

- comprehensiveness@k = p(x) - p(x without its top k resources): higher is better;
- sufficiency@k = p(x) - p(only its top k resources): lower is better;
- deletion AUC: the mean probability while the top resources are removed one by one (up to 10;
  trapezoid over the share removed): lower is better;

always beside a random ranking of the same resources. The patient's demographics (the Patient
resource) are never removed: a record has no meaning without a patient, so they are left out of every
ranking, random included. Also measured: the distribution of integrated gradients' completeness error,
and the model-randomization sanity check (Adebayo et al. 2018): the head, then the top layers one by one
are re-initialised, and the rank correlation between the scores of the trained and the randomized model
must fall for a method that depends on what the model learned. Rollout does not depend on the head, so
it keeps a correlation of 1 there: that is why it is shown as "what the model looked at".

Each metric declares its range and direction (like ferret's evaluators) so reports cannot be misread.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from cds_plugin.errors import CdsPluginError
from cds_plugin.explain import registry
from cds_plugin.explain.engine import Engine
from cds_plugin.explain.explanation import Explanation
from cds_plugin.explain.inputs import ExplainInput, Target
from cds_plugin.fhir.record import FACT_FIELDS, PatientRecord

RANDOM = "random"
KS = (1, 3, 5)
DELETION_STEPS = 10
DEFAULT_METHODS = ("integrated_gradients", "attention", "attention_gradient", "shap")
SANITY_METHODS = ("integrated_gradients", "attention_gradient", "attention")


@dataclass(frozen=True)
class Metric:
    """A measure with its range and which way is better."""

    name: str
    low: float
    high: float
    higher_is_better: bool
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "range": [self.low, self.high if math.isfinite(self.high) else None],
            "higher_is_better": self.higher_is_better,
            "description": self.description,
        }


METRICS: dict[str, Metric] = {
    **{
        f"comprehensiveness@{k}": Metric(
            f"comprehensiveness@{k}", -1.0, 1.0, True, f"p(x) - p(x without its top {k} resources)"
        )
        for k in KS
    },
    **{
        f"sufficiency@{k}": Metric(
            f"sufficiency@{k}", -1.0, 1.0, False, f"p(x) - p(only its top {k} resources)"
        )
        for k in KS
    },
    "deletion_auc": Metric(
        "deletion_auc",
        0.0,
        1.0,
        False,
        f"mean probability while the top resources are removed one by one (up to {DELETION_STEPS})",
    ),
    "completeness_error": Metric(
        "completeness_error",
        0.0,
        math.inf,
        False,
        "|sum(scores) - (F(x) - F(baseline))| / |F(x) - F(baseline)| (additive methods)",
    ),
    "rank_correlation": Metric(
        "rank_correlation",
        -1.0,
        1.0,
        False,
        "Spearman correlation of resource scores, trained vs randomized model (should fall)",
    ),
}


# --- records without (or with only) some resources ---------------------------------------------------


def without_resources(record: PatientRecord, references: Iterable[str]) -> PatientRecord:
    """The record without every fact of the given resources (the patient always stays)."""
    gone = set(references)
    return dataclasses.replace(
        record,
        **{
            name: tuple(f for f in getattr(record, name) if f.reference not in gone)
            for name, _ in FACT_FIELDS
        },
    )


def only_resources(record: PatientRecord, references: Iterable[str]) -> PatientRecord:
    """The record with the patient and the given resources only."""
    kept = set(references)
    return dataclasses.replace(
        record,
        **{name: tuple(f for f in getattr(record, name) if f.reference in kept) for name, _ in FACT_FIELDS},
    )


def ranking(explanation: Explanation) -> list[str]:
    """Resources in order of support for the target (highest score first), the Patient left out."""
    entries = [e for e in explanation.evidence if e.resource_type != "Patient"]
    return [e.reference for e in sorted(entries, key=lambda e: -e.score)]


class Repredictor:
    """Re-predicts altered records of one patient, caching by the set of resources removed or kept."""

    def __init__(self, engine: Engine, record: PatientRecord, batch_size: int = 16) -> None:
        self.engine = engine
        self.record = record
        self.batch_size = batch_size
        self.cache: dict[tuple[str, frozenset[str]], np.ndarray] = {}

    def probabilities(self, requests: Sequence[tuple[str, frozenset[str]]]) -> list[np.ndarray]:
        """Probabilities of every label for each ("without" | "only", references) request."""
        todo = [r for r in dict.fromkeys(requests) if r not in self.cache]
        for k in range(0, len(todo), self.batch_size):
            chunk = todo[k : k + self.batch_size]
            encoded = []
            for mode, refs in chunk:
                altered = (without_resources if mode == "without" else only_resources)(self.record, refs)
                encoded.append(self.engine.encode(altered)[0])
            probs = self.engine.probabilities(self.engine.logits(encoded))
            for request, p in zip(chunk, probs, strict=True):
                self.cache[request] = p
        return [self.cache[r] for r in requests]


def erasure_scores(
    repredict: Repredictor, order: Sequence[str], label: int, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Comprehensiveness and sufficiency at each k and deletion AUC for one ranking of one target."""
    steps = min(DELETION_STEPS, len(order))
    requests = [("without", frozenset())]
    requests += [("without", frozenset(order[:k])) for k in ks]
    requests += [("only", frozenset(order[:k])) for k in ks]
    requests += [("without", frozenset(order[:i])) for i in range(1, steps + 1)]
    probs = [p[label] for p in repredict.probabilities(requests)]
    full = float(probs[0])
    out: dict[str, float] = {}
    for i, k in enumerate(ks):
        out[f"comprehensiveness@{k}"] = full - float(probs[1 + i])
        out[f"sufficiency@{k}"] = full - float(probs[1 + len(ks) + i])
    if steps:
        curve = np.array([full, *probs[1 + 2 * len(ks) :]], dtype=np.float64)
        out["deletion_auc"] = float(((curve[1:] + curve[:-1]) / 2).mean())
    return out


# --- model randomization -------------------------------------------------------------------------------


def _reinitialise(module: nn.Module, generator: torch.Generator, std: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            with torch.no_grad():
                m.weight.normal_(0.0, std, generator=generator)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()


def randomized_engines(engine: Engine, seed: int = 0, max_layers: int = 2) -> list[tuple[str, Engine]]:
    """Cascading randomization: the head, then the head and the top layer, then one layer more..."""
    network = copy.deepcopy(engine.network)
    generator = torch.Generator().manual_seed(seed)
    std = 0.02  # the network's initialisation (CdsFactsModel._init_weights)
    out = []
    if network.head is not None:
        _reinitialise(network.head, generator, std)
    if network.code_weights is not None:  # the bag path's head: its fitted regression
        with torch.no_grad():
            network.code_weights.weight.normal_(0.0, std, generator=generator)
    stages: list[tuple[str, nn.Module | None]] = [("head", None)]
    layers = list(network.layers)
    for depth, layer in enumerate(reversed(layers[-max_layers:] if max_layers else []), start=1):
        stages.append((f"head + top {depth} layer{'s' if depth > 1 else ''}", layer))
    for name, layer in stages:
        if layer is not None:
            _reinitialise(layer, generator, std)
        model = dataclasses.replace(engine.model, network=copy.deepcopy(network).eval())
        out.append((name, Engine(model)))
    return out


def rank_correlation(a: Explanation, b: Explanation) -> float | None:
    """Spearman correlation of two explanations' resource scores (None when undefined)."""
    scores_b = {e.reference: e.score for e in b.evidence}
    pairs = [(e.score, scores_b.get(e.reference, 0.0)) for e in a.evidence]
    if len(pairs) < 3:
        return None
    x, y = zip(*pairs, strict=True)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


# --- the evaluation ------------------------------------------------------------------------------------


@dataclass
class Case:
    """One patient input and its targets."""

    record: PatientRecord
    inp: ExplainInput
    targets: list[Target]


def validation_records(
    model_dir: str | Path, data_dir: str | Path, limit: int | None, notes: list[str]
) -> list[PatientRecord]:
    """The model's validation patients under `data_dir` (every patient if none is), at most `limit`."""
    from cds_plugin.fhir.reader import read_record
    from cds_plugin.model.dataset import bundle_files

    meta_path = Path(model_dir) / "training.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    validation = set(meta.get("validation_patients") or [])
    chosen: list[PatientRecord] = []
    others: list[PatientRecord] = []
    for path in bundle_files(data_dir):
        try:
            record = read_record(path)
        except CdsPluginError:
            continue
        (chosen if record.reference in validation else others).append(record)
        if limit is not None and len(chosen) >= limit:
            break
    if not chosen:
        notes.append("none of the model's validation patients is under the data folder: all patients used")
        chosen = others
    return chosen[:limit] if limit is not None else chosen


def build_cases(
    engine: Engine, records: Sequence[PatientRecord], targets_per_patient: int, seed: int
) -> list[Case]:
    """One example per patient (a reference time with a year of follow-up, masked as in validation),
    explained for its most probable labels."""
    from cds_plugin.explain.inputs import prepare
    from cds_plugin.model.task import make_example, reference_times

    cases = []
    for record in records:
        rng = random.Random(f"{seed}:{record.reference}")
        times = reference_times(record, 1, rng)
        example_record = make_example(record, times[0], rng, engine.labels).record if times else record
        inp = prepare(engine, example_record)
        if not inp.length:
            continue
        order = np.argsort(-inp.probabilities, kind="stable")[:targets_per_patient]
        keys = engine.labels.labels
        targets = [Target(int(i), keys[i].code, keys[i].system, keys[i].display, keys[i].kind) for i in order]
        cases.append(Case(example_record, inp, targets))
    return cases


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "sem": None}
    arr = np.asarray(values, dtype=np.float64)
    sem = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else None
    return {"n": len(arr), "mean": float(arr.mean()), "sem": sem}


def evaluate_explanations(
    model_dir: str | Path,
    data_dir: str | Path,
    limit: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    targets_per_patient: int = 1,
    seed: int = 0,
    sanity_cases: int = 8,
    settings: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Faithfulness of each method beside a random ranking; see the module docstring. JSON-ready."""
    started = time.perf_counter()
    settings = settings or {}
    for name in methods:
        registry.get(name)  # unknown names fail before any work
    engine = Engine.load(model_dir)
    notes: list[str] = []
    records = validation_records(model_dir, data_dir, limit, notes)
    cases = build_cases(engine, records, targets_per_patient, seed)
    if not cases:
        raise ValueError(f"no patient with facts to explain under {data_dir}")
    per_method: dict[str, dict[str, list[float]]] = {m: {} for m in [*methods, RANDOM]}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    completeness: list[float] = []
    steps_used: list[int] = []
    rng = random.Random(seed)
    explained: list[tuple[Case, dict[str, list[Explanation]]]] = []
    for case in tqdm(cases, desc="explaining", disable=not progress, unit="patient"):
        repredict = Repredictor(engine, case.record)
        by_method: dict[str, list[Explanation]] = {}
        for name in methods:
            method = registry.get(name)
            t0 = time.perf_counter()
            by_method[name] = method.run(case.inp, case.targets, method.settings(settings.get(name, {})))
            seconds[name].append((time.perf_counter() - t0) / len(case.targets))
        removable = sorted(
            {s.reference for s in case.inp.linearization.segments if s.resource_type != "Patient"}
            & {case.inp.linearization.segments[i].reference for i in case.inp.position_segments}
        )
        for j, target in enumerate(case.targets):
            orders = {name: ranking(by_method[name][j]) for name in methods}
            orders[RANDOM] = rng.sample(removable, len(removable))
            for name, order in orders.items():
                for metric, value in erasure_scores(repredict, order, target.label_index).items():
                    per_method[name].setdefault(metric, []).append(value)
            ig = by_method.get("integrated_gradients")
            if ig is not None and ig[j].completeness_error is not None:
                completeness.append(ig[j].completeness_error)
                steps_used.append(int(ig[j].settings["steps_used"]))
        if len(explained) < sanity_cases:
            explained.append((case, by_method))
    if log:
        log(f"explained {len(cases)} patients in {time.perf_counter() - started:.0f} s; randomization check")
    sanity = randomization_check(
        engine, explained[:sanity_cases], [m for m in SANITY_METHODS if m in methods]
    )
    table = {
        name: {metric: _summary(values) for metric, values in sorted(metrics.items())}
        for name, metrics in per_method.items()
    }
    for name in methods:
        table[name]["seconds_per_target"] = _summary(seconds[name])
    report = {
        "meta": {
            "model_version": engine.version,
            "patients": len(cases),
            "targets_per_patient": targets_per_patient,
            "cases": sum(len(c.targets) for c in cases),
            "methods": list(methods),
            "settings": {name: registry.get(name).settings(settings.get(name, {})) for name in methods},
            "seed": seed,
            "seconds": round(time.perf_counter() - started, 1),
            "notes": notes,
        },
        "metrics": {name: m.to_json() for name, m in METRICS.items()},
        "methods": table,
        "completeness": _completeness(completeness, steps_used),
        "randomization": sanity,
        "bar": _bar(table),
    }
    return report


def _completeness(errors: Sequence[float], steps: Sequence[int]) -> dict[str, Any]:
    if not errors:
        return {"n": 0}
    arr = np.asarray(errors)
    return {
        "n": len(arr),
        "median": float(np.median(arr)),
        "p90": float(np.quantile(arr, 0.9)),
        "max": float(arr.max()),
        "share_above_1pct": float((arr > 0.01).mean()),
        "share_above_5pct": float((arr > 0.05).mean()),
        "steps_used": {
            str(s): int(n) for s, n in sorted(zip(*np.unique(steps, return_counts=True), strict=True))
        },
    }


def _bar(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The acceptance bar: IG comprehensiveness@3 at least 3x random's and above rollout's.

    When random removal does not lower the probability on average (random's mean <= 0), the ratio is
    undefined and so is the verdict (None); the difference to random is reported in every case.
    """

    def mean(method: str) -> float | None:
        return table.get(method, {}).get("comprehensiveness@3", {}).get("mean")

    ig, rand, roll = mean("integrated_gradients"), mean(RANDOM), mean("attention")
    out: dict[str, Any] = {"ig": ig, "random": rand, "attention": roll}
    if ig is not None and rand is not None:
        out["ratio_to_random"] = ig / rand if rand > 0 else None
        out["difference_to_random"] = ig - rand
        out["at_least_3x_random"] = bool(ig >= 3 * rand) if rand > 0 else None
    if ig is not None and roll is not None:
        out["above_attention"] = ig > roll
    return out


def randomization_check(
    engine: Engine, explained: Sequence[tuple[Case, dict[str, list[Explanation]]]], methods: Sequence[str]
) -> dict[str, Any]:
    """Mean rank correlation between the trained and the randomized model's scores, per stage."""
    if not explained or not methods:
        return {"stages": [], "methods": {}}
    stages = randomized_engines(engine)
    out: dict[str, Any] = {"stages": [name for name, _ in stages], "cases": 0, "methods": {}}
    for name in methods:
        method = registry.get(name)
        rows = []
        for _, random_engine in stages:
            values = []
            for case, by_method in explained:
                inp = ExplainInput(random_engine, case.inp.linearization, case.inp.encoded, case.record)
                randomized = method.run(inp, case.targets, method.settings({}))
                for original, other in zip(by_method[name], randomized, strict=True):
                    value = rank_correlation(original, other)
                    if value is not None:
                        values.append(value)
            rows.append(_summary(values))
        out["methods"][name] = rows
    out["cases"] = sum(len(c.targets) for c, _ in explained)
    return out


# --- rendering -----------------------------------------------------------------------------------------


def _fmt(summary: dict[str, Any] | None, digits: int = 3) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    text = f"{summary['mean']:.{digits}f}"
    if summary.get("sem") is not None:
        text += f" ± {summary['sem']:.{digits}f}"
    return text


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what docs/explanations.md shows)."""
    metrics = [*(f"comprehensiveness@{k}" for k in KS), *(f"sufficiency@{k}" for k in KS), "deletion_auc"]
    arrows = {m: "↑" if METRICS[m].higher_is_better else "↓" for m in metrics}
    lines = [
        "| method | " + " | ".join(f"{m} {arrows[m]}" for m in metrics) + " | s/target |",
        "|---|" + "---:|" * (len(metrics) + 1),
    ]
    for name, row in report["methods"].items():
        cells = [_fmt(row.get(m)) for m in metrics]
        cells.append(_fmt(row.get("seconds_per_target"), 2) if name != RANDOM else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    c = report["completeness"]
    if c.get("n"):
        lines += [
            "",
            "Integrated gradients completeness error (↓): "
            f"median {c['median']:.2%}, 90th percentile {c['p90']:.2%}, max {c['max']:.2%}; "
            f"above 1 %: {c['share_above_1pct']:.0%}, above 5 %: {c['share_above_5pct']:.0%} "
            f"of {c['n']} explanations; steps used: "
            + ", ".join(f"{s} ({n})" for s, n in c["steps_used"].items())
            + ".",
        ]
    sanity = report["randomization"]
    if sanity.get("stages"):
        lines += [
            "",
            f"Model randomization, mean Spearman correlation with the trained model's scores (↓, over "
            f"{sanity['cases']} explanations):",
            "",
            "| method | " + " | ".join(sanity["stages"]) + " |",
            "|---|" + "---:|" * len(sanity["stages"]),
        ]
        for name, rows in sanity["methods"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(r, 2) for r in rows) + " |")
    bar = report["bar"]
    if bar.get("difference_to_random") is not None:
        ratio = bar.get("ratio_to_random")
        if ratio is None:
            versus = f"random's is {bar['random']:.3f}: no ratio, the 3x bar is undefined"
        else:
            verdict = "meets" if bar.get("at_least_3x_random") else "misses"
            versus = f"{ratio:.1f} x random's {bar['random']:.3f}: {verdict} the 3x bar"
        lines += [
            "",
            f"Bar: integrated gradients comprehensiveness@3 = {bar['ig']:.3f} ({versus})"
            + (
                f", {'above' if bar.get('above_attention') else 'not above'} attention rollout's "
                f"({bar['attention']:.3f})."
                if "above_attention" in bar
                else "."
            ),
        ]
    meta = report["meta"]
    lines += [
        "",
        f"Model {meta['model_version']}; {meta['patients']} validation patients, "
        f"{meta['cases']} explanations ({meta['targets_per_patient']} per patient); {meta['seconds']} s.",
    ]
    return "\n".join(lines)
