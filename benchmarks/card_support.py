"""How right the model's suggestions are, by how much the patient's record raises their odds.

    .venv/bin/python benchmarks/card_support.py [--model DIR] [--data DIR] [--floor 0.10]

On the model's validation patients (the examples `cds-plugin evaluate` scores: each a patient at a
reference time with some documented considerations hidden), every consideration a card could propose
(at or above its threshold, plausible for the patient's sex and age, at or above `--floor`) is put in a
band of its odds ratio: the odds the model gives for this record over the odds it gives an empty record
(`Consideration.odds_ratio`, whose reference is integrated gradients' baseline). Prints, per kind and
band, how many suggestions and the share that were right (the hidden consideration was the patient's):
the figures behind `min_card_odds_ratio` (docs/cards.md, "Only what the record supports").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"
BANDS = ((0.0, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, float("inf")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the model shipped in the package)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--floor", type=float, default=0.10, help="min_card_probability")
    args = parser.parse_args()

    from cds_plugin.model.assessment import odds_ratio
    from cds_plugin.model.concepts import DIAGNOSIS, TREATMENT
    from cds_plugin.model.dataset import load_corpus
    from cds_plugin.model.engine import Engine, default_model_path
    from cds_plugin.model.evaluation import evaluation_data, question_targets
    from cds_plugin.model.training import TrainConfig, predict_logits

    folder = Path(args.model) if args.model else default_model_path()
    engine = Engine.load(folder)
    meta = json.loads((folder / "training.json").read_text())
    config = TrainConfig.from_json(meta.get("config", {}))
    validation = set(meta.get("validation_patients") or [])
    records = [r for r in load_corpus(args.data, progress=False) if r.reference in validation]
    _, _, examples, targets = evaluation_data(
        records, engine.labels, config.per_patient, config.seed + 100, config.mask_rate
    )
    probs = engine.probabilities(
        predict_logits(engine.network, [engine.encode(e.record)[0] for e in examples])
    )
    p0 = engine.empty_probabilities
    thresholds = np.asarray(engine.model.thresholds)
    y = question_targets(targets, "undocumented")
    ratios = odds_ratio(probs, p0[None])
    plausible = np.array([[label.plausible(e.sex, e.age) for label in engine.labels] for e in examples])
    kinds = np.array([label.kind for label in engine.labels])
    print(
        f"model {engine.version}: {len(records)} validation patients, {len(examples)} examples; "
        f"suggestions at or above the threshold, plausible, p >= {args.floor:.2f}"
    )
    below = [label.display for label, t, q in zip(engine.labels, thresholds, p0, strict=True) if t <= q]
    print(f"labels whose threshold an empty record already reaches: {', '.join(below) or 'none'}")
    for kind in (DIAGNOSIS, TREATMENT):
        chosen = (probs >= thresholds[None]) & (probs >= args.floor) & plausible & (y >= 0) & (kinds == kind)
        print(f"{kind}: {chosen.sum()} suggestions, {y[chosen].mean():.2f} right")
        for low, high in BANDS:
            band = chosen & (ratios >= low) & (ratios < high)
            if band.any():
                print(
                    f"   odds ratio {low:g} to {high:g}: {band.sum():4d} suggestions, "
                    f"{y[band].mean():.2f} right"
                )
        for cut in (1.5, 2.0, 3.0, 5.0):
            kept = chosen & (ratios >= cut)
            lost = chosen & (ratios < cut)
            print(
                f"   min_card_odds_ratio {cut:g}: keeps {kept.sum()} ({y[kept].mean():.2f} right), "
                f"drops {lost.sum()} of which {int(y[lost].sum())} right"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
