"""Evaluation against baselines, by question, label group and patient subgroup.

Questions: (a) "undocumented" (masked concepts active at T vs concepts absent through T + 1 year) and
(b) "new" (concepts first occurring within the year after T vs absent ones). Groups: diagnoses and
treatments. Figures: per-label and macro AUROC and AUPRC (macro over labels with at least one
positive and one negative example), recall@5 and expected calibration error. Baselines, computed in the
same run on the same examples: label prevalence, and logistic regression on the bag of every code of the
(masked) record with the label space's grouping, the last value of the most frequent labs and age/sex at
T. Subgroups: sex, age bands 0-17, 18-44, 45-64, 65+, race (US Core extension; reported, never a model
input) and the source folder (the Synthea generation). `subgroup_gaps` gives, per dimension, the
largest difference between its groups, for the model and for logistic regression.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from cds_plugin.model.concepts import DIAGNOSIS, TREATMENT
from cds_plugin.model.dataset import IGNORE, NEG, POS_NEW, POS_UNDOC
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.task import Example

log = logging.getLogger(__name__)

QUESTIONS = {"undocumented": POS_UNDOC, "new": POS_NEW}
GROUPS = (DIAGNOSIS, TREATMENT)
AGE_BANDS = ((0, 18, "0-17"), (18, 45, "18-44"), (45, 65, "45-64"), (65, 200, "65+"))


def question_targets(targets: np.ndarray, question: str) -> np.ndarray:
    """1 for positives of the question, 0 for negatives, -1 for everything else."""
    positive = QUESTIONS[question]
    y = np.full(targets.shape, -1, dtype=np.int8)
    y[targets == NEG] = 0
    y[targets == positive] = 1
    return y


def per_label(scores: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for j in range(scores.shape[1]):
        keep = y[:, j] >= 0
        yj, sj = y[keep, j], scores[keep, j]
        n_pos, n_neg = int(yj.sum()), int((yj == 0).sum())
        row: dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg}
        if n_pos and n_neg:
            row["auroc"] = float(roc_auc_score(yj, sj))
            row["auprc"] = float(average_precision_score(yj, sj))
        out.append(row)
    return out


def recall_at_k(scores: np.ndarray, y: np.ndarray, k: int = 5) -> float | None:
    """Share of an example's positives ranked in its top k among its questions, averaged over examples."""
    recalls = []
    for i in range(scores.shape[0]):
        keep = np.flatnonzero(y[i] >= 0)
        positives = keep[y[i, keep] == 1]
        if not len(positives):
            continue
        top = keep[np.argsort(-scores[i, keep], kind="stable")[:k]]
        recalls.append(len(np.intersect1d(top, positives)) / len(positives))
    return float(np.mean(recalls)) if recalls else None


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float | None:
    keep = y >= 0
    p, t = probs[keep], y[keep]
    if not len(p):
        return None
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in pairwise(edges):
        in_bin = (p >= lo) & ((p < hi) | (hi == 1.0))
        if in_bin.any():
            ece += in_bin.mean() * abs(p[in_bin].mean() - t[in_bin].mean())
    return float(ece)


def summarize(scores: np.ndarray, targets: np.ndarray, labels: LabelSpace) -> dict[str, Any]:
    """Macro figures for each question x group, plus per-label rows."""
    result: dict[str, Any] = {}
    for question in QUESTIONS:
        y = question_targets(targets, question)
        rows = per_label(scores, y)
        for group in GROUPS:
            idx = labels.kind_indices(group)
            rated = [rows[j] for j in idx if "auprc" in rows[j]]
            result[f"{question}/{group}"] = {
                "macro_auroc": float(np.mean([r["auroc"] for r in rated])) if rated else None,
                "macro_auprc": float(np.mean([r["auprc"] for r in rated])) if rated else None,
                "labels_rated": len(rated),
                "positives": int(sum(rows[j]["n_pos"] for j in idx)),
                "recall_at_5": recall_at_k(scores[:, idx], y[:, idx]) if idx else None,
                "ece": expected_calibration_error(scores[:, idx], y[:, idx]) if idx else None,
            }
        result[f"{question}/per_label"] = {
            labels.labels[j].id: rows[j] for j in range(len(labels)) if rows[j]["n_pos"]
        }
    return result


def selection_score(logits: np.ndarray, targets: np.ndarray) -> float:
    """Model selection score: mean over labels of both questions of AUPRC (ranking only)."""
    values = []
    for question in QUESTIONS:
        rows = per_label(logits, question_targets(targets, question))
        values.extend(r["auprc"] for r in rows if "auprc" in r)
    return float(np.mean(values)) if values else 0.0


def subgroups(examples: Sequence[Example], sources: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks over examples: sex, age bands at T, and source folder when `sources` names them."""
    groups: dict[str, np.ndarray] = {}
    if sources:
        origin = np.array([sources.get(e.patient, "") for e in examples])
        for value in sorted(set(sources.values())):
            groups[f"source={value}"] = origin == value
    sex = np.array([e.sex or "unknown" for e in examples])
    for value in ("female", "male"):
        groups[f"sex={value}"] = sex == value
    ages = np.array([e.age if e.age is not None else -1 for e in examples], dtype=float)
    for lo, hi, name in AGE_BANDS:
        groups[f"age={name}"] = (ages >= lo) & (ages < hi)
    race = np.array([e.race or "not stated" for e in examples])
    for value in sorted(set(race.tolist())):
        groups[f"race={value}"] = race == value
    return groups


# --- baselines ---------------------------------------------------------------------------------------


def prevalence_scores(train_targets: np.ndarray, n_examples: int) -> np.ndarray:
    """Each label's positive rate among its training questions, the same for every example."""
    keep = train_targets != IGNORE
    rate = ((train_targets > 0) & keep).sum(0) / np.maximum(keep.sum(0), 1)
    return np.tile(rate.astype(np.float32), (n_examples, 1))


def baseline_features(
    example: Example, labels: LabelSpace, lab_codes: set[str] | None = None
) -> dict[str, float]:
    """Bag of every code of the (masked) input record, its considerations (member codes grouped), the
    last numeric value per lab code, and age and sex at T."""
    record = example.record
    features: dict[str, float] = {}
    for c in record.conditions:
        i = labels.of_condition(c)
        if i is not None:
            features[f"concept:{i}"] = 1.0
    for m in record.medication_requests:
        i = labels.of_request(m)
        if i is not None:
            features[f"concept:{i}"] = 1.0
    for group, facts in (
        ("dx", record.conditions),
        ("rx", record.medication_requests),
        ("px", record.procedures),
        ("im", record.immunizations),
        ("al", record.allergies),
        ("en", [t for e in record.encounters for t in e.types[:1]]),
        ("cp", [a for p in record.care_plans for a in (*p.categories, *p.activities)]),
    ):
        for f in facts:
            concept = getattr(f, "code", f)
            if concept is not None and getattr(concept, "primary", None) is not None:
                features[f"{group}:{concept.primary.code}"] = 1.0
    last: dict[str, tuple[Any, float]] = {}
    for o in record.observations:
        if o.code is None or o.code.primary is None:
            continue
        code = o.code.primary.code
        if o.value_concept is not None and o.value_concept.primary is not None:
            features[f"obs:{code}={o.value_concept.primary.code}"] = 1.0
        if o.value is None or (lab_codes is not None and code not in lab_codes):
            continue
        when = o.date
        if code not in last or (when is not None and (last[code][0] is None or when >= last[code][0])):
            last[code] = (when, float(o.value))
    for code, (_, value) in last.items():
        features[f"lab:{code}"] = value
        features[f"has_lab:{code}"] = 1.0
    if example.age is not None:
        features["age"] = example.age / 100.0
    if example.sex:
        features[f"sex:{example.sex}"] = 1.0
    return features


@dataclass
class LogisticBaseline:
    """One logistic regression per label, each fitted on the examples where that label is a question."""

    vectorizer: DictVectorizer
    models: list[Any]
    lab_codes: set[str]
    scale: np.ndarray
    labels: LabelSpace

    @classmethod
    def fit(
        cls, examples: Sequence[Example], targets: np.ndarray, labels: LabelSpace, top_labs: int = 60
    ) -> LogisticBaseline:
        lab_counts: Counter[str] = Counter()
        for e in examples:
            lab_counts.update(
                {
                    o.code.primary.code
                    for o in e.record.observations
                    if o.value is not None and o.code is not None and o.code.primary is not None
                }
            )
        lab_codes = {c for c, _ in lab_counts.most_common(top_labs)}
        vectorizer = DictVectorizer(sparse=True)
        x = vectorizer.fit_transform([baseline_features(e, labels, lab_codes) for e in examples])
        scale = np.asarray(np.abs(x).max(axis=0).todense()).ravel()
        scale[scale == 0] = 1.0
        x = x.multiply(1.0 / scale).tocsr()
        models: list[Any] = []
        for j in range(targets.shape[1]):
            keep = targets[:, j] != IGNORE
            y = (targets[keep, j] > 0).astype(int)
            if y.min(initial=1) == y.max(initial=0):
                models.append(float(y.mean()) if len(y) else 0.0)
                continue
            model = LogisticRegression(C=1.0, max_iter=500, solver="liblinear")
            model.fit(x[keep], y)
            models.append(model)
        return cls(vectorizer=vectorizer, models=models, lab_codes=lab_codes, scale=scale, labels=labels)

    def predict(self, examples: Sequence[Example]) -> np.ndarray:
        x = self.vectorizer.transform([baseline_features(e, self.labels, self.lab_codes) for e in examples])
        x = x.multiply(1.0 / self.scale).tocsr()
        out = np.zeros((len(examples), len(self.models)), dtype=np.float32)
        for j, model in enumerate(self.models):
            out[:, j] = model if isinstance(model, float) else model.predict_proba(x)[:, 1]
        return out


def compare(
    scores: dict[str, np.ndarray],
    targets: np.ndarray,
    examples: Sequence[Example],
    labels: LabelSpace,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every scorer on the same examples, overall and by subgroup."""
    report: dict[str, Any] = {"overall": {}, "subgroups": {}}
    for name, s in scores.items():
        report["overall"][name] = summarize(s, targets, labels)
    for group, mask in subgroups(examples, sources).items():
        if mask.sum() == 0:
            continue
        report["subgroups"][group] = {"examples": int(mask.sum())}
        for name, s in scores.items():
            full = summarize(s[mask], targets[mask], labels)
            summary = {k: v for k, v in full.items() if not k.endswith("per_label")}
            # per-label AUPRC kept so that subgroup_gaps can compare groups over the same labels
            summary["label_auprc"] = {
                question: {
                    lid: row["auprc"] for lid, row in full[f"{question}/per_label"].items() if "auprc" in row
                }
                for question in QUESTIONS
            }
            report["subgroups"][group][name] = summary
    return report


def _shared_label_gaps(
    per_group: Sequence[Mapping[str, Mapping[Any, float]]], scorers: Sequence[str]
) -> tuple[int, dict[str, float | None]]:
    """`per_group`: for each group, scorer -> {label: AUPRC} of its rated labels. How many labels are rated
    in every group, and per scorer the largest difference between the groups' mean AUPRC over them."""
    shared: set[Any] | None = None
    for group in per_group:
        for scorer in scorers:
            shared = set(group[scorer]) if shared is None else shared & set(group[scorer])
    shared = shared or set()
    gaps: dict[str, float | None] = {}
    for scorer in scorers:
        means = (
            [float(np.mean([group[scorer][lid] for lid in shared])) for group in per_group] if shared else []
        )
        gaps[scorer] = float(max(means) - min(means)) if len(means) > 1 else None
    return len(shared), gaps


def subgroup_gaps(
    report: dict[str, Any], min_examples: int = 30
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Largest between-group difference of macro AUPRC per dimension (sex, age, race), question x group
    and scorer, over groups with at least `min_examples` examples (smaller ones are too noisy to rank).

    The macro is taken over the labels rated (a positive and a negative) in *every* compared group, so
    that two groups are compared on the same questions: a label rated for one sex only (prostate
    disease, osteoporosis therapy) would otherwise move one group's mean and not the other's. Each row
    also carries `labels`, how many labels the comparison rests on, and `all_labels_<scorer>`, the gap
    of the plain per-group macros (the subgroup table's figures).
    """
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for dimension in ("sex", "age", "race"):
        groups = [
            values
            for name, values in report["subgroups"].items()
            if name.startswith(f"{dimension}=") and values["examples"] >= min_examples
        ]
        rows: dict[str, dict[str, float | int | None]] = {}
        for question in QUESTIONS:
            for kind in GROUPS:
                key = f"{question}/{kind}"
                per_group = [
                    {
                        scorer: {
                            lid: v
                            for lid, v in g[scorer].get("label_auprc", {}).get(question, {}).items()
                            if lid.split(":", 1)[0] == kind
                        }
                        for scorer in report["overall"]
                    }
                    for g in groups
                ]
                n_shared, gaps = _shared_label_gaps(per_group, list(report["overall"]))
                row: dict[str, float | int | None] = {"labels": n_shared}
                for scorer in report["overall"]:
                    row[scorer] = gaps[scorer]
                    plain = [
                        g[scorer][key]["macro_auprc"]
                        for g in groups
                        if g[scorer][key]["macro_auprc"] is not None
                    ]
                    row[f"all_labels_{scorer}"] = float(max(plain) - min(plain)) if len(plain) > 1 else None
                rows[key] = row
        out[dimension] = rows
    return out


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """sklearn's average precision (ties as one threshold), without its input checks: the bootstrap
    below calls it hundreds of thousands of times."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def gap_intervals(
    scores: dict[str, np.ndarray],
    targets: np.ndarray,
    examples: Sequence[Example],
    report: dict[str, Any],
    label_ids: Sequence[str],
    model: str = "model",
    baseline: str = "logistic_regression",
    resamples: int = 200,
    seed: int = 0,
    min_examples: int = 30,
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """How sure the comparison of subgroup gaps is: a patient bootstrap of (model gap - baseline gap).

    Patients are resampled with replacement (all examples of a drawn patient together); in each resample
    the gaps are recomputed as `subgroup_gaps` does (same groups, macro AUPRC over the labels rated in
    every group). Per dimension and question x group: the point difference, the 2.5 and 97.5 percentiles
    and the share of resamples where the model's gap is the larger. An interval across 0 means the
    validation split cannot tell the two gaps apart.
    """
    rng = np.random.default_rng(seed)
    patients = np.array([e.patient for e in examples])
    ids, inverse = np.unique(patients, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    masks = subgroups(examples)
    kinds = {kind: [j for j, lid in enumerate(label_ids) if lid.startswith(f"{kind}:")] for kind in GROUPS}
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for dimension, rows in report["gaps"].items():
        names = [
            n
            for n, v in report["subgroups"].items()
            if n.startswith(f"{dimension}=") and v["examples"] >= min_examples
        ]
        out[dimension] = {}
        for key, point in rows.items():
            if point.get(model) is None or point.get(baseline) is None:
                continue
            question, kind = key.split("/")
            y_all = question_targets(targets, question)
            diffs = []
            for _ in range(resamples):
                take = np.concatenate([rows_of[i] for i in rng.integers(0, len(ids), len(ids))])
                per_group = []
                for name in names:
                    idx = take[masks[name][take]]
                    y = y_all[idx]
                    group = {}
                    for scorer in (model, baseline):
                        s = scores[scorer][idx]
                        values = {}
                        for j in kinds[kind]:
                            keep = y[:, j] >= 0
                            yj = y[keep, j]
                            if 0 < yj.sum() < len(yj):
                                values[j] = average_precision(yj, s[keep, j])
                        group[scorer] = values
                    per_group.append(group)
                n_shared, gaps = _shared_label_gaps(per_group, (model, baseline))
                if n_shared:
                    diffs.append(gaps[model] - gaps[baseline])
            if not diffs:
                continue
            d = np.array(diffs)
            out[dimension][key] = {
                "difference": float(point[model] - point[baseline]),
                "low": float(np.percentile(d, 2.5)),
                "high": float(np.percentile(d, 97.5)),
                "model_gap_larger": float((d > 0).mean()),
                "resamples": len(d),
            }
    return out


# --- the evaluate command ----------------------------------------------------------------------------


def evaluation_data(
    records: Sequence[Any], labels: LabelSpace, per_patient: int, seed: int, mask_rate: float
) -> tuple[list[Any], list[frozenset[int]], list[Example], np.ndarray]:
    """Situations, one fixed mask each, the masked examples and their target codes."""
    from cds_plugin.model.dataset import STATE_CODE, build_situations, examples_of, fixed_masks

    situations = build_situations(records, per_patient, seed, labels)
    masks = fixed_masks(situations, seed, mask_rate)
    examples = examples_of(situations, masks, labels)
    targets = np.full((len(examples), len(labels)), NEG, dtype=np.int8)
    for row, example in enumerate(examples):
        for i, state in example.states.items():
            targets[row, i] = STATE_CODE[state]
    return situations, masks, examples, targets


def source_folders(data_dir: str | Path, records: Sequence[Any], files: Sequence[Path]) -> dict[str, str]:
    """Patient reference -> first folder under `data_dir` its file lies in (e.g. the Synthea generation)."""
    root = Path(data_dir)
    out = {}
    for record, path in zip(records, files, strict=True):
        parts = path.relative_to(root).parts if root.is_dir() else ()
        out[record.reference] = parts[0] if len(parts) > 1 else ""
    return out


@dataclass
class ScoredSplit:
    """One model's validation examples (or every patient's, `split="all"`), scored by the model and by
    the baselines learnt from the other patients."""

    examples: list[Example]
    targets: np.ndarray
    scores: dict[str, np.ndarray]
    patients: int
    baseline_patients: int
    model_seconds: float
    labels: LabelSpace
    model_version: str
    seed: int
    validation_patients: frozenset[str]


def score_split(model_dir: str | Path, records: Sequence[Any], split: str = "validation") -> ScoredSplit:
    """The examples a model is evaluated on, with every scorer's probabilities (see `evaluate_model`)."""
    from cds_plugin.model.engine import Engine
    from cds_plugin.model.training import TrainConfig, predict_logits

    engine = Engine.load(model_dir)
    meta = json.loads((Path(model_dir) / "training.json").read_text())
    config = TrainConfig.from_json(meta.get("config", {}))
    validation = set(meta.get("validation_patients") or [])
    if split == "validation":
        eval_records = [r for r in records if r.reference in validation]
        base_records = [r for r in records if r.reference not in validation]
        if not eval_records:
            raise ValueError(
                f"none of model {model_dir}'s validation patients is in the data; use split='all'"
            )
    else:
        eval_records, base_records = list(records), []
    labels = engine.labels
    _, _, eval_examples, targets = evaluation_data(
        eval_records, labels, config.per_patient, config.seed + 100, config.mask_rate
    )
    started = time.perf_counter()
    inputs = [engine.encode(e.record)[0] for e in eval_examples]
    scores = {"model": engine.probabilities(predict_logits(engine.network, inputs))}
    model_seconds = time.perf_counter() - started
    if base_records:
        _, _, base_examples, base_targets = evaluation_data(
            base_records, labels, config.per_patient, config.seed, config.mask_rate
        )
        scores["prevalence"] = prevalence_scores(base_targets, len(eval_examples))
        scores["logistic_regression"] = LogisticBaseline.fit(base_examples, base_targets, labels).predict(
            eval_examples
        )
    return ScoredSplit(
        eval_examples,
        targets,
        scores,
        len(eval_records),
        len(base_records),
        model_seconds,
        labels,
        engine.version,
        config.seed,
        frozenset(validation),
    )


def _report(scored: ScoredSplit, sources: dict[str, str], gap_resamples: int) -> dict[str, Any]:
    labels = scored.labels
    report = compare(scored.scores, scored.targets, scored.examples, labels, sources)
    report["gaps"] = subgroup_gaps(report)
    if "logistic_regression" in scored.scores and gap_resamples:
        report["gap_intervals"] = gap_intervals(
            scored.scores,
            scored.targets,
            scored.examples,
            report,
            [label.id for label in labels],
            resamples=gap_resamples,
            seed=scored.seed,
        )
    return report


def evaluate_model(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "validation",
    progress: bool = True,
    gap_resamples: int = 200,
) -> dict[str, Any]:
    """Evaluate a trained model beside the two baselines on the same examples.

    `split="validation"`: the model's validation patients found under `data_dir` (the baselines learn
    from the other patients there). `split="all"`: every patient under `data_dir` is evaluated (a
    held-out set); the baselines are then skipped (they would need the training patients).
    """
    from cds_plugin.model.dataset import load_corpus_with_files

    records, files = load_corpus_with_files(data_dir, progress=progress)
    scored = score_split(model_dir, records, split)
    report = _report(scored, source_folders(data_dir, records, files), gap_resamples)
    report["meta"] = _meta(scored, split)
    return report


def _meta(scored: ScoredSplit, split: str) -> dict[str, Any]:
    notes = (
        [] if scored.baseline_patients else ["baselines skipped: no training patients under the data folder"]
    )
    return {
        "model_version": scored.model_version,
        "split": split,
        "patients": scored.patients,
        "examples": len(scored.examples),
        "baseline_training_patients": scored.baseline_patients,
        "labels": len(scored.labels),
        "model_inference_s": round(scored.model_seconds, 3),
        "notes": notes,
    }


def evaluate_folds(
    model_dirs: Sequence[str | Path], data_dir: str | Path, progress: bool = True, gap_resamples: int = 200
) -> dict[str, Any]:
    """Cross-validation: models trained on the folds of one split (`cds-plugin train --fold K`), each
    scored on its own validation patients with baselines learnt from its own training patients, the
    examples pooled into one report. Subgroups are then as large as the corpus allows: every patient
    is rated once, by a model that never saw it (instead of a fifth of them)."""
    from cds_plugin.model.dataset import load_corpus_with_files

    records, files = load_corpus_with_files(data_dir, progress=progress)
    parts = [score_split(m, records, "validation") for m in model_dirs]
    labels = parts[0].labels
    if any([lab.id for lab in p.labels] != [lab.id for lab in labels] for p in parts[1:]):
        raise ValueError("the models of a cross-validation must share one label space")
    seen: set[str] = set()
    for m, p in zip(model_dirs, parts, strict=True):
        if p.validation_patients & seen:
            raise ValueError(f"model {m} shares validation patients with another: train one model per fold")
        seen |= p.validation_patients
    scorers = [name for name in parts[0].scores if all(name in p.scores for p in parts)]
    pooled = ScoredSplit(
        examples=[e for p in parts for e in p.examples],
        targets=np.concatenate([p.targets for p in parts]),
        scores={name: np.concatenate([p.scores[name] for p in parts]) for name in scorers},
        patients=sum(p.patients for p in parts),
        baseline_patients=min(p.baseline_patients for p in parts),
        model_seconds=sum(p.model_seconds for p in parts),
        labels=labels,
        model_version=", ".join(p.model_version for p in parts),
        seed=parts[0].seed,
        validation_patients=frozenset(seen),
    )
    report = _report(pooled, source_folders(data_dir, records, files), gap_resamples)
    # each fold on its own too: pooled AUPRC mixes five models' score scales, the per-fold mean does not
    report["folds"] = [
        {
            "model_version": p.model_version,
            "patients": p.patients,
            **{
                name: {
                    key: {m: row[m] for m in ("macro_auroc", "macro_auprc")}
                    for key, row in summarize(p.scores[name], p.targets, labels).items()
                    if not key.endswith("per_label")
                }
                for name in scorers
            },
        }
        for p in parts
    ]
    report["meta"] = {
        **_meta(pooled, f"cross-validation, {len(parts)} folds pooled"),
        "patients_per_fold": [p.patients for p in parts],
    }
    return report


def render_table(report: dict[str, Any]) -> str:
    """The headline figures as a plain-text table (also used by the CLI through rich)."""
    lines = []
    header = (
        f"{'question/group':<24}{'scorer':<22}{'macroAUROC':>11}{'macroAUPRC':>11}{'recall@5':>10}{'ECE':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for key in (f"{q}/{g}" for q in QUESTIONS for g in GROUPS):
        for name, summary in report["overall"].items():
            row = summary[key]

            def fmt(v: float | None) -> str:
                return "-" if v is None else f"{v:.3f}"

            lines.append(
                f"{key:<24}{name:<22}{fmt(row['macro_auroc']):>11}{fmt(row['macro_auprc']):>11}"
                f"{fmt(row['recall_at_5']):>10}{fmt(row['ece']):>8}"
            )
    return "\n".join(lines)


def render_gaps(report: dict[str, Any]) -> str:
    """Largest macro-AUPRC gap between subgroups per dimension over the labels rated in every group,
    model beside the baselines (`labels`: how many labels each comparison rests on)."""
    gaps = report.get("gaps") or subgroup_gaps(report)
    scorers = list(report["overall"])
    lines = [f"{'largest AUPRC gap (shared labels)':<34}{'labels':>7}" + "".join(f"{s:>22}" for s in scorers)]
    for dimension, rows in gaps.items():
        for question, values in rows.items():
            cells = "".join(
                f"{'-' if values.get(s) is None else format(values[s], '.3f'):>22}" for s in scorers
            )
            lines.append(f"{dimension + ' ' + question:<34}{values.get('labels', 0):>7}{cells}")
    intervals = report.get("gap_intervals") or {}
    if intervals:
        lines.append("")
        lines.append("model gap - logistic regression gap, patient bootstrap 95% interval:")
        for dimension, rows in intervals.items():
            for question, v in rows.items():
                interval = f"[{v['low']:+.3f}, {v['high']:+.3f}]"
                lines.append(
                    f"{dimension + ' ' + question:<34}{v['difference']:+.3f} {interval}"
                    f"  model's larger in {v['model_gap_larger']:.0%} of {v['resamples']}"
                )
    return "\n".join(lines)


def render_folds(report: dict[str, Any]) -> str:
    """A cross-validation's folds one by one: macro AUPRC of the model and logistic regression for
    undocumented diagnoses and treatments, and their mean over the folds."""
    keys = [f"undocumented/{g}" for g in GROUPS]
    lines = [f"{'fold':<6}{'patients':>9}" + "".join(f"{k + ' model vs LR':>40}" for k in keys)]
    margins: dict[str, list[float]] = {k: [] for k in keys}
    for n, fold in enumerate(report.get("folds", [])):
        cells = ""
        for k in keys:
            model = fold["model"][k]["macro_auprc"]
            lr = fold.get("logistic_regression", {}).get(k, {}).get("macro_auprc")
            if model is None or lr is None:
                cells += f"{'-':>40}"
                continue
            margins[k].append(model - lr)
            cells += f"{f'{model:.3f} vs {lr:.3f} ({model - lr:+.3f})':>40}"
        lines.append(f"{n:<6}{fold['patients']:>9}" + cells)
    mean = "".join(f"{(f'{np.mean(v):+.3f}' if v else '-'):>40}" for v in margins.values())
    lines.append(f"{'mean margin':<15}" + mean)
    return "\n".join(lines)
