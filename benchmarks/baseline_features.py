"""What the logistic-regression baseline reads that matters: its feature families left out in turn.

    .venv/bin/python benchmarks/baseline_features.py [--data DIR] [--folds 0,1,2,3,4] [--drop ...]

For each fold of the cross-validation split (`cds-plugin train --fold K`), the baseline is fitted on
the fold's training patients and scored on its validation examples, exactly as `cds-plugin evaluate`
does, once with every feature and once per variant without some (docs/model-card.md, "Care plan
activities as facts"). Variants, joined with `+`:

- concept: the considerations of Conditions and MedicationRequests (the label file's grouping)
- lab: the last value of the frequent labs
- cp: every care-plan category and activity code
- cpfirst: with cp, put back each plan's first named category only (what the shipped model reads)

Prints macro AUPRC per question and group. No model is trained.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cds_plugin.model.evaluation as evaluation
from cds_plugin.model.dataset import load_corpus, split_patients
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.training import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"
FAMILIES = {"concept": ("concept:",), "lab": ("lab:",), "cp": ("cp:",)}


def without(drop: tuple[str, ...], full: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    prefixes = tuple(p for name in drop for p in FAMILIES.get(name, ()))

    def features(example: Any, labels: LabelSpace, lab_codes: set[str] | None = None) -> dict[str, float]:
        out = {k: v for k, v in full(example, labels, lab_codes).items() if not k.startswith(prefixes)}
        if "cpfirst" in drop:
            for plan in example.record.care_plans:
                named = [c for c in plan.categories if c.text or any(x.display for x in c.codings)]
                if named and named[0].primary is not None:
                    out["cp:" + named[0].primary.code] = 1.0
        return out

    return features


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--drop", default="concept,lab,cp,cp+cpfirst", help="variants, comma-separated")
    args = parser.parse_args()
    variants = [(), *(tuple(v.split("+")) for v in args.drop.split(",") if v)]
    unknown = {n for v in variants for n in v} - {*FAMILIES, "cpfirst"}
    if unknown:
        parser.error(f"unknown feature families: {', '.join(sorted(unknown))}")
    records = load_corpus(args.data, progress=False)
    labels = LabelSpace.from_file()
    full = evaluation.baseline_features
    print(f"{'fold':>4}  {'without':<22} {'undoc dx':>9} {'undoc tx':>9} {'new dx':>9} {'new tx':>9}")
    for fold in (int(f) for f in args.folds.split(",")):
        config = TrainConfig(fold=fold)
        train, val = split_patients(records, config.val_fraction, config.split_salt, fold)
        _, _, val_examples, val_targets = evaluation.evaluation_data(
            val, labels, config.per_patient, config.seed + 100, config.mask_rate
        )
        _, _, train_examples, train_targets = evaluation.evaluation_data(
            train, labels, config.per_patient, config.seed, config.mask_rate
        )
        for drop in variants:
            evaluation.baseline_features = without(drop, full)
            try:
                fitted = evaluation.LogisticBaseline.fit(train_examples, train_targets, labels)
                scores = fitted.predict(val_examples)
            finally:
                evaluation.baseline_features = full
            s = evaluation.summarize(scores, val_targets, labels)
            row = [
                s[f"{q}/{g}"]["macro_auprc"]
                for q in ("undocumented", "new")
                for g in ("diagnosis", "treatment")
            ]
            name = "+".join(drop) or "-"
            print(f"{fold:>4}  {name:<22} " + " ".join(f"{v:>9.3f}" for v in row))


if __name__ == "__main__":
    main()
