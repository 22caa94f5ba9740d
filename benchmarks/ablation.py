"""The model card's ablation table: each part of the model switched off in turn, beside the baselines.

    .venv/bin/python benchmarks/ablation.py [--data DIR] [--variants full,no_pretraining,...] [--json FILE]

One run, one data preparation per input: the corpus is read, split and encoded once with the default
training configuration (once more for each variant that reads the record otherwise); every variant is
fitted from the same seed and evaluated on the same validation examples (one fixed mask per situation)
as logistic regression and prevalence, overall and for the 2019 and 2025 Synthea generations apart.
Prints macro AUROC, macro AUPRC, recall@5 and ECE per question and group (docs/model-card.md shows the
output). Variants:

- full: self-attention over facts + the bag path (a regression on code presence) + display embeddings,
  with the default pretraining
- no_pretraining / pretraining: the default with pretraining off / on
- attention_only: self-attention without the bag path
- pooled_embeddings: the same fact embeddings max-pooled, no attention, no bag path
- bag_only: the bag path alone (its fitted regression)
- no_displays: without MiniLM display embeddings
- no_concepts: without the consideration embedding of Conditions and MedicationRequests
- mean_pool: the attention states mean-pooled instead of max-pooled (smooth for integrated gradients)
- no_activities / no_reasons / no_parts: care-plan activities, coded reasons, or both only as words
  of their fact's text, which the model does not read (no_parts is the input of the model shipped
  before them)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cds_plugin.model.evaluation import (
    GROUPS,
    QUESTIONS,
    LogisticBaseline,
    compare,
    evaluation_data,
    prevalence_scores,
)
from cds_plugin.model.training import (
    TrainConfig,
    fit,
    fit_temperature,
    predict_logits,
    prepare_corpus,
    sigmoid,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"


VARIANTS = (
    "full",
    "pretraining",
    "attention_only",
    "pooled_embeddings",
    "bag_only",
    "no_displays",
    "no_concepts",
    "mean_pool",
    "no_activities",
    "no_reasons",
    "no_parts",
)


def variant(config: TrainConfig, name: str) -> TrainConfig:
    network = config.network
    changes = {
        "full": {},
        "no_pretraining": {"pretrain_epochs": 0},
        "pretraining": {"pretrain_epochs": max(config.pretrain_epochs, 2)},
        "attention_only": {"network": dataclasses.replace(network, bag=False)},
        "pooled_embeddings": {"network": dataclasses.replace(network, attention=False, bag=False)},
        "bag_only": {"network": dataclasses.replace(network, pooled=False)},
        "no_displays": {"network": dataclasses.replace(network, displays=False)},
        "no_concepts": {"network": dataclasses.replace(network, concepts=False)},
        "mean_pool": {"network": dataclasses.replace(network, pooling="mean")},
        "no_activities": {"care_plan_activities": False},
        "no_reasons": {"coded_reasons": False},
        "no_parts": {"care_plan_activities": False, "coded_reasons": False},
    }[name]
    return dataclasses.replace(config, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the training default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = TrainConfig()
    if args.epochs:
        config = dataclasses.replace(config, finetune_epochs=args.epochs)
    started = time.perf_counter()
    corpus = prepare_corpus(args.data, config, progress=False)
    labels = corpus.labels
    _, _, val_examples, targets = evaluation_data(
        corpus.val_records, labels, config.per_patient, config.seed + 100, config.mask_rate
    )
    if not np.array_equal(targets, corpus.val_targets):
        raise SystemExit("validation targets differ from training's: the evaluation is not the same split")
    _, _, base_examples, base_targets = evaluation_data(
        corpus.train_records, labels, config.per_patient, config.seed, config.mask_rate
    )
    scores: dict[str, np.ndarray] = {
        "prevalence": prevalence_scores(base_targets, len(val_examples)),
        "logistic_regression": LogisticBaseline.fit(base_examples, base_targets, labels).predict(
            val_examples
        ),
    }
    seconds = {}
    corpora = {(config.care_plan_activities, config.coded_reasons): corpus}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        changed = variant(config, name)
        reads = (changed.care_plan_activities, changed.coded_reasons)
        if reads not in corpora:  # another input: the same situations and masks, read otherwise
            corpora[reads] = prepare_corpus(args.data, changed, progress=False)
            if not np.array_equal(corpora[reads].val_targets, targets):
                raise SystemExit(f"{name}: validation targets differ; not the same examples")
        model, _ = fit(corpora[reads], changed, progress=False)
        logits = predict_logits(model, corpora[reads].val_inputs)
        scores[name] = sigmoid(logits / fit_temperature(logits, targets))
        seconds[name] = time.perf_counter() - t0
        logging.info("%s fitted in %.0f s", name, seconds[name])
    report = compare(scores, targets, val_examples, labels, corpus.sources)
    report["meta"] = {
        "seconds": seconds,
        "total_s": time.perf_counter() - started,
        "config": config.to_json(),
    }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))


def print_table(report: dict) -> None:  # type: ignore[type-arg]
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    sections = [("all patients", report["overall"])]
    for group, values in report["subgroups"].items():
        if group.startswith("source="):
            sections.append((group, {k: v for k, v in values.items() if k != "examples"}))
    for title, by_scorer in sections:
        print(f"\n## {title}")
        print(f"{'question/group':<24}{'scorer':<22}{'AUROC':>8}{'AUPRC':>8}{'R@5':>8}{'ECE':>8}")
        for key in (f"{q}/{g}" for q in QUESTIONS for g in GROUPS):
            for name, summary in by_scorer.items():
                row = summary[key]
                print(
                    f"{key:<24}{name:<22}{fmt(row['macro_auroc']):>8}{fmt(row['macro_auprc']):>8}"
                    f"{fmt(row['recall_at_5']):>8}{fmt(row['ece']):>8}"
                )


if __name__ == "__main__":
    main()
