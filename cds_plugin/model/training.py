"""Training: fact vocabulary, masked-fact pretraining, fine-tuning with fresh masks, calibration, thresholds.

`train()` is seeded and reproducible on one machine (results can differ across CPU types in the last
digits). It writes a model folder that `Engine.load(path)` reads; see `artifacts.py` for its files.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cds_plugin.fhir.linearize import Linearization, linearize
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.artifacts import save_model
from cds_plugin.model.batch import collate
from cds_plugin.model.dataset import (
    IGNORE,
    SPLIT_SALT,
    Prepared,
    build_situations,
    fixed_masks,
    load_corpus_with_files,
    prepare,
    split_patients,
)
from cds_plugin.model.facts import MASK, UNK, EncodedFacts, FactVocabulary
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.network import CdsFactsConfig, CdsFactsModel

log = logging.getLogger(__name__)


@dataclass
class NetworkShape:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.1
    attention: bool = True  # self-attention layers (off: the fact embeddings are pooled directly)
    pooled: bool = True  # the path over pooled fact states (off: the bag path alone)
    bag: bool = True  # the linear bag-of-facts path (a regression on code presence, fit_linear)
    displays: bool = True  # MiniLM display embeddings added to code embeddings
    concepts: bool = True  # an embedding of the consideration a fact states (the label file's grouping)
    pooling: str = "max"  # the pooled path's reduction over facts: "max" or "mean" (network.POOLINGS)


@dataclass
class TrainConfig:
    """Everything that decides a trained model. Defaults are the shipped model's (docs/model-card.md)."""

    seed: int = 13
    val_fraction: float = 0.2
    split_salt: str = SPLIT_SALT  # which patients are validation (by hash); another salt, another split
    fold: int = 0  # which val_fraction-wide share of the hash is validation (0: the shipped split)
    per_patient: int = 4  # reference times per patient (fine-tuning and evaluation)
    mask_rate: float = 0.5  # share of documented considerations hidden from the input, drawn per epoch
    max_facts: int = 1024
    min_count: int = 2  # training patients a code needs for its own embedding
    n_bins: int = 10  # value quantile bins per code
    labels_file: str | None = None  # default: the package's labels.toml
    network: NetworkShape = field(default_factory=NetworkShape)
    code_dropout: float = 0.1  # share of known codes shown as [UNK] (with their display) in training
    pretrain_epochs: int = 0
    pretrain_per_patient: int = 8
    pretrain_fact_rate: float = 0.15
    finetune_epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    linear_c: float = 1.0  # inverse L2 strength of the bag path's logistic regression (fit_linear)
    linear_masks: int = 1  # masks drawn per training situation for that regression
    warmup_fraction: float = 0.1
    limit_patients: int | None = None
    #: fine-tuning weighs each label's positives so that both sexes' positives count alike in total (at
    #: most `MAX_BALANCE` times up or down); labels with positives of one sex only are left as they are
    balance_sex: bool = False
    #: a care plan's coded activities as positions of their own (fhir.linearize; docs/model-card.md)
    care_plan_activities: bool = True
    #: an encounter's or procedure's coded reasons as positions of their own (fhir.linearize)
    coded_reasons: bool = True

    def linearize(self, record: PatientRecord) -> Linearization:
        """A record as this configuration's model reads it."""
        return linearize(
            record, max_facts=self.max_facts, activities=self.care_plan_activities, reasons=self.coded_reasons
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("network"), dict):
            known["network"] = NetworkShape(**known["network"])
        return cls(**known)

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """A configuration that trains in seconds (tests and CI)."""
        config = cls(
            per_patient=2,
            max_facts=256,
            network=NetworkShape(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
            pretrain_epochs=1,
            pretrain_per_patient=2,
            finetune_epochs=2,
            batch_size=8,
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        return config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Indices grouped by similar length (little padding); group order shuffled when `rng` is given."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random() if rng else 0))
    groups = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, positive_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy over the labels that are questions for this example (targets != IGNORE),
    each positive weighed by `positive_weights` (same shape) when given."""
    keep = targets != IGNORE
    if not keep.any():
        return logits.sum() * 0.0
    positive = (targets > 0).float()
    losses = nn.functional.binary_cross_entropy_with_logits(logits, positive, reduction="none")
    if positive_weights is not None:
        losses = losses * torch.where(targets > 0, positive_weights, torch.ones_like(positive_weights))
    return losses[keep].mean()


#: The most sex balancing multiplies or divides a positive's weight by.
MAX_BALANCE = 4.0


def sex_balance(train_data: Sequence[Prepared], n_labels: int) -> np.ndarray:
    """(examples, labels) weights of positives: per label, the female and male positives (documented or
    new in the training situations) weigh (n_f + n_m) / (2 n_sex) each, within [1/MAX_BALANCE,
    MAX_BALANCE], so the two sexes' positives weigh about alike in the loss. Why: the model's subgroup
    gaps between the sexes must not exceed the logistic regression's (docs/model-card.md)."""
    sexes = np.array([p.situation.sex for p in train_data])
    positives = np.zeros((len(train_data), n_labels), dtype=bool)
    for row, p in enumerate(train_data):
        positives[row, list(p.situation.documented | p.situation.new)] = True
    weights = np.ones((len(train_data), n_labels), dtype=np.float32)
    counts = {sex: positives[sexes == sex].sum(0) for sex in ("female", "male")}
    total = counts["female"] + counts["male"]
    for sex, n in counts.items():
        both = (counts["female"] > 0) & (counts["male"] > 0)
        factor = np.where(both, total / (2 * np.maximum(n, 1)), 1.0).clip(1 / MAX_BALANCE, MAX_BALANCE)
        weights[sexes == sex] = factor.astype(np.float32)
    return weights


@torch.no_grad()
def predict_logits(model: CdsFactsModel, inputs: Sequence[EncodedFacts], batch_size: int = 32) -> np.ndarray:
    """Logits for every input, in the order given."""
    model.eval()
    out = np.zeros((len(inputs), model.config.n_labels), dtype=np.float32)
    displays = bool(model.config.display_dim)
    for idx in length_batches([len(e) for e in inputs], batch_size, None):
        batch = collate([inputs[i] for i in idx], model.config.n_codes, displays)
        out[idx] = model(**batch.embed_args(), mask=batch.mask).numpy()
    return out


def _drop_codes(batch_codes: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor | None:
    if rate <= 0:
        return None
    known = batch_codes > MASK
    return known & (torch.rand(batch_codes.shape, generator=generator) < rate)


def pretrain(
    model: CdsFactsModel, inputs: Sequence[EncodedFacts], config: TrainConfig, progress: bool
) -> list[float]:
    """Masked-fact pretraining: hide a share of facts' codes, predict them from the rest of the record."""
    if not model.layers:
        return []
    decoder = nn.Linear(model.config.hidden_size, model.config.n_codes)
    params = list(model.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 1)
    steps = config.pretrain_epochs * math.ceil(len(inputs) / config.batch_size)
    scheduler = _schedule(optimizer, steps, int(steps * config.warmup_fraction))
    displays = bool(model.config.display_dim)
    losses = []
    model.train()
    for epoch in range(config.pretrain_epochs):
        total, n = 0.0, 0
        for idx in tqdm(
            length_batches([len(e) for e in inputs], config.batch_size, rng),
            desc=f"pretrain {epoch + 1}",
            disable=not progress,
        ):
            batch = collate([inputs[i] for i in idx], model.config.n_codes, displays)
            chosen = batch.mask & (batch.codes > UNK)
            chosen &= torch.rand(batch.codes.shape, generator=generator) < config.pretrain_fact_rate
            if not chosen.any():
                continue
            args = batch.embed_args()
            args["codes"] = batch.codes.masked_fill(chosen, MASK)
            if batch.display_index is not None:
                args["display_index"] = batch.display_index.masked_fill(chosen, MASK)
            args["concepts"] = batch.concepts.masked_fill(chosen, 0)
            states, _ = model.encode(model.embed(**args), batch.mask)
            loss = nn.functional.cross_entropy(decoder(states[chosen]), batch.codes[chosen])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            n += 1
        losses.append(total / max(n, 1))
        log.info("pretrain epoch %d: loss %.4f", epoch + 1, losses[-1])
    return losses


def finetune(
    model: CdsFactsModel,
    train_data: Sequence[Prepared],
    val_inputs: Sequence[EncodedFacts],
    val_targets: np.ndarray,
    config: TrainConfig,
    progress: bool,
    score: Callable[[np.ndarray, np.ndarray], float],
) -> dict[str, Any]:
    """Fine-tune on the task with a fresh mask per example and epoch; keeps the best validation epoch."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed + 2)
    generator = torch.Generator().manual_seed(config.seed + 2)
    steps = config.finetune_epochs * math.ceil(len(train_data) / config.batch_size)
    scheduler = _schedule(optimizer, steps, int(steps * config.warmup_fraction))
    n_labels = model.config.n_labels
    displays = bool(model.config.display_dim)
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None}
    history = []
    balance = torch.from_numpy(sex_balance(train_data, n_labels)) if config.balance_sex else None
    if model.code_weights is not None:  # epoch 0: the fitted logistic regression alone
        best["score"] = score(predict_logits(model, val_inputs), val_targets)
        history.append({"epoch": 0, "train_loss": None, "val_score": best["score"]})
        log.info("fine-tune epoch 0 (linear path alone): validation score %.4f", best["score"])
    if model.head is None:  # the bag path alone: nothing left to train
        return {"history": history, "best_epoch": 0, "best_val_score": best["score"]}
    for epoch in range(config.finetune_epochs):
        model.train()
        masks = [
            frozenset(i for i in sorted(p.situation.documented) if rng.random() < config.mask_rate)
            for p in train_data
        ]
        inputs = [p.masked(m) for p, m in zip(train_data, masks, strict=True)]
        targets = np.stack([p.targets(m, n_labels) for p, m in zip(train_data, masks, strict=True)])
        total, n = 0.0, 0
        for idx in tqdm(
            length_batches([len(e) for e in inputs], config.batch_size, rng),
            desc=f"fine-tune {epoch + 1}",
            disable=not progress,
        ):
            batch = collate([inputs[i] for i in idx], model.config.n_codes, displays)
            drop = _drop_codes(batch.codes, config.code_dropout if displays else 0.0, generator)
            logits = model(**batch.embed_args(), mask=batch.mask, drop_codes=drop)
            loss = masked_bce(
                logits, torch.from_numpy(targets[idx]).long(), balance[idx] if balance is not None else None
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            n += 1
        val_score = score(predict_logits(model, val_inputs), val_targets)
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_score": val_score})
        log.info(
            "fine-tune epoch %d: loss %.4f, validation score %.4f", epoch + 1, total / max(n, 1), val_score
        )
        if val_score > best["score"]:
            best = {
                "score": val_score,
                "epoch": epoch + 1,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return {"history": history, "best_epoch": best["epoch"], "best_val_score": best["score"]}


def code_presence(model: CdsFactsModel, inputs: Sequence[EncodedFacts]) -> np.ndarray:
    """(inputs, n_codes): what the bag path multiplies the code weights with (`bag_weights` summed per
    code: 1 for each code present, each distinct unseen code adding 1 to [UNK])."""
    out = np.zeros((len(inputs), model.config.n_codes), dtype=np.float64)
    displays = bool(model.config.display_dim)
    for idx in length_batches([len(e) for e in inputs], 256, None):
        batch = collate([inputs[i] for i in idx], model.config.n_codes, displays)
        rows = torch.zeros(len(idx), model.config.n_codes, dtype=torch.float64)
        rows.scatter_add_(1, batch.codes, batch.bag().weights.to(torch.float64))
        out[idx] = rows.numpy()
    return out


def fit_linear(model: CdsFactsModel, train_data: Sequence[Prepared], config: TrainConfig) -> dict[str, Any]:
    """Fit the bag path's code weights and label biases as one L2-regularized logistic regression per
    label on code presence (liblinear, to convergence), then freeze them.

    Trained by gradient alongside the attention path, these tables overfit rare codes and stay below a
    plain logistic regression on the same inputs; fitted convexly they are that regression, and the
    gradient-trained parts learn only what it misses.
    """
    from sklearn.linear_model import LogisticRegression

    assert model.code_weights is not None
    started = time.perf_counter()
    n_labels = model.config.n_labels
    rng = random.Random(config.seed + 3)
    inputs, rows = [], []
    for _ in range(config.linear_masks):
        for p in train_data:
            hidden = frozenset(i for i in sorted(p.situation.documented) if rng.random() < config.mask_rate)
            inputs.append(p.masked(hidden))
            rows.append(p.targets(hidden, n_labels))
    x = code_presence(model, inputs)
    targets = np.stack(rows)
    weights = np.zeros((model.config.n_codes, n_labels), dtype=np.float32)
    bias = np.zeros(n_labels, dtype=np.float32)
    for j in range(n_labels):
        keep = targets[:, j] != IGNORE
        y = (targets[keep, j] > 0).astype(int)
        if not len(y) or y.min() == y.max():
            rate = float(np.clip(y.mean() if len(y) else 0.0, 1e-4, 1 - 1e-4))
            bias[j] = math.log(rate / (1 - rate))
            continue
        regression = LogisticRegression(C=config.linear_c, max_iter=1000, solver="liblinear")
        regression.fit(x[keep], y)
        weights[:, j] = regression.coef_[0]
        bias[j] = regression.intercept_[0]
    with torch.no_grad():
        model.code_weights.weight.copy_(torch.from_numpy(weights))
        model.label_bias.copy_(torch.from_numpy(bias))
    model.code_weights.weight.requires_grad_(False)
    model.label_bias.requires_grad_(False)
    return {"examples": len(inputs), "seconds": time.perf_counter() - started}


#: The lowest temperature calibration chooses (see fit_temperature).
MIN_TEMPERATURE = 0.25


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature scaling on validation: one T for all labels, minimizing the masked NLL.

    A grid over log T in [MIN_TEMPERATURE, 20] (then refined around the best point): deterministic
    and never diverges, unlike gradient fits on small validation sets. The floor: on a validation set
    the model separates perfectly the NLL falls without end as T -> 0, and a temperature far below 1
    would then say more about the set's size than about the model (it also makes the probability a
    step function of the input, which no attribution integrates well).
    """
    keep = targets != IGNORE
    if not keep.any():
        return 1.0
    z = logits[keep].astype(np.float64)
    y = (targets[keep] > 0).astype(np.float64)

    def nll(t: float) -> float:
        s = z / t
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    grid = np.exp(np.linspace(np.log(MIN_TEMPERATURE), np.log(20.0), 121))
    best = min(grid, key=nll)
    fine = np.exp(np.linspace(np.log(best) - 0.06, np.log(best) + 0.06, 41))
    return float(max(min(fine, key=nll), MIN_TEMPERATURE))


def choose_thresholds(
    probs: np.ndarray, targets: np.ndarray, min_positive: int = 3
) -> tuple[list[float], float]:
    """Per-label threshold maximizing F1 on validation; labels with few positives use the pooled one."""

    def best_f1(p: np.ndarray, y: np.ndarray) -> float:
        if y.sum() == 0:
            return 0.5
        candidates = np.unique(np.round(p, 3))
        best_t, best = 0.5, -1.0
        for t in candidates:
            pred = p >= t
            tp = float((pred & y).sum())
            f1 = 2 * tp / (pred.sum() + y.sum()) if (pred.sum() + y.sum()) else 0.0
            if f1 > best:
                best, best_t = f1, float(t)
        return best_t

    keep = targets != IGNORE
    pooled = best_f1(probs[keep], targets[keep] > 0)
    thresholds = []
    for j in range(probs.shape[1]):
        k = keep[:, j]
        y = targets[k, j] > 0
        thresholds.append(best_f1(probs[k, j], y) if y.sum() >= min_positive else pooled)
    return thresholds, pooled


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def build_model(vocab: FactVocabulary, labels: LabelSpace, shape: NetworkShape) -> CdsFactsModel:
    from cds_plugin.model.display_vectors import DIM, embed

    config = CdsFactsConfig(
        n_codes=vocab.n_codes,
        n_kinds=vocab.n_kinds,
        n_values=vocab.n_values,
        n_labels=len(labels),
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        dropout=shape.dropout,
        attention=shape.attention,
        pooled=shape.pooled,
        bag=shape.bag,
        pooling=shape.pooling,
        display_dim=DIM if shape.displays else 0,
        n_concepts=len(labels) + 1 if shape.concepts else 0,
    )
    model = CdsFactsModel(config)
    if shape.displays:
        texts = [vocab.displays.get(code, "") for code in vocab.codes]
        table = embed(texts)
        table[: MASK + 1] = 0.0  # padding, unknown and mask have no words
        model.display_table.copy_(torch.from_numpy(table))
    return model


@dataclass
class Corpus:
    """Everything training reads, prepared once (an ablation fits several networks on one Corpus)."""

    labels: LabelSpace
    vocab: FactVocabulary
    train_records: list[Any]
    val_records: list[Any]
    train_data: list[Prepared]
    val_data: list[Prepared]
    val_masks: list[frozenset[int]]
    val_inputs: list[EncodedFacts]
    val_targets: np.ndarray
    prepare_s: float
    sources: dict[str, str]  # patient reference -> first folder under the data folder (Synthea generation)


def prepare_corpus(data_dir: str | Path, config: TrainConfig, progress: bool = True) -> Corpus:
    """Read, split, build situations, fit the fact vocabulary and encode (no network yet)."""
    started = time.perf_counter()
    labels = LabelSpace.from_file(config.labels_file)
    from cds_plugin.model.evaluation import source_folders

    records, files = load_corpus_with_files(data_dir, limit=config.limit_patients, progress=progress)
    if len(records) < 2:
        raise ValueError(f"need at least 2 readable patients under {data_dir}, found {len(records)}")
    folds = round(1 / config.val_fraction)
    if config.fold and (not 0 <= config.fold < folds or abs(folds * config.val_fraction - 1) > 1e-9):
        raise ValueError(f"fold must be 0 to {folds - 1} (1 / val_fraction folds of a unit val_fraction)")
    train_records, val_records = split_patients(records, config.val_fraction, config.split_salt, config.fold)
    if not val_records:  # tiny corpora: keep the split by patient all the same
        val_records, train_records = train_records[-1:], train_records[:-1]
    train_situations = build_situations(train_records, config.per_patient, config.seed, labels)
    val_situations = build_situations(val_records, config.per_patient, config.seed + 100, labels)
    if not train_situations or not val_situations:
        raise ValueError("no reference time with a year of follow-up was found; more data is needed")
    train_lins = [config.linearize(s.record) for s in train_situations]
    vocab = FactVocabulary.fit(
        [(s.patient, lin) for s, lin in zip(train_situations, train_lins, strict=True)],
        min_count=config.min_count,
        n_bins=config.n_bins,
    )
    train_data = [prepare(s, vocab, labels, lin) for s, lin in zip(train_situations, train_lins, strict=True)]
    val_data = [prepare(s, vocab, labels, config.linearize(s.record)) for s in val_situations]
    val_masks = fixed_masks(val_situations, config.seed + 100, config.mask_rate)
    val_inputs = [p.masked(m) for p, m in zip(val_data, val_masks, strict=True)]
    val_targets = np.stack([p.targets(m, len(labels)) for p, m in zip(val_data, val_masks, strict=True)])
    labels.positives.update(
        {
            label.id: sum(1 for s in train_situations if i in s.documented or i in s.new)
            for i, label in enumerate(labels)
        }
    )
    log.info(
        "%d patients (%d train, %d validation), %d + %d situations, %d labels, %d codes",
        len(records),
        len(train_records),
        len(val_records),
        len(train_situations),
        len(val_situations),
        len(labels),
        vocab.n_codes,
    )
    return Corpus(
        labels,
        vocab,
        train_records,
        val_records,
        train_data,
        val_data,
        val_masks,
        val_inputs,
        val_targets,
        time.perf_counter() - started,
        source_folders(data_dir, records, files),
    )


def fit(corpus: Corpus, config: TrainConfig, progress: bool = True) -> tuple[CdsFactsModel, dict[str, Any]]:
    """Pretrain (when configured) and fine-tune a network on a prepared corpus."""
    from cds_plugin.model.evaluation import selection_score

    seed_everything(config.seed)
    timings: dict[str, float] = {}
    model = build_model(corpus.vocab, corpus.labels, config.network)
    pretrain_losses: list[float] = []
    if config.pretrain_epochs and model.layers:
        t0 = time.perf_counter()
        situations = build_situations(
            corpus.train_records, config.pretrain_per_patient, config.seed + 7, corpus.labels
        )
        inputs = [corpus.vocab.encode(config.linearize(s.record)) for s in situations]
        pretrain_losses = pretrain(model, inputs, config, progress)
        timings["pretrain_s"] = time.perf_counter() - t0
    linear: dict[str, Any] = {}
    if model.code_weights is not None:
        linear = fit_linear(model, corpus.train_data, config)
        timings["linear_s"] = linear["seconds"]
    t0 = time.perf_counter()
    result = finetune(
        model, corpus.train_data, corpus.val_inputs, corpus.val_targets, config, progress, selection_score
    )
    timings["finetune_s"] = time.perf_counter() - t0
    return model, {
        "pretrain_losses": pretrain_losses,
        "linear": linear,
        "finetune": dict(result),
        "timings": timings,
    }


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model on a folder of per-patient FHIR bundles and write it to `out_dir`."""
    config = config or TrainConfig()
    started = time.perf_counter()
    corpus = prepare_corpus(data_dir, config, progress)
    model, fitted = fit(corpus, config, progress)
    val_logits = predict_logits(model, corpus.val_inputs)
    temperature = fit_temperature(val_logits, corpus.val_targets)
    thresholds, pooled = choose_thresholds(sigmoid(val_logits / temperature), corpus.val_targets)
    timings = {"prepare_s": corpus.prepare_s, **fitted["timings"], "total_s": time.perf_counter() - started}
    lengths = [len(p.encoded) + p.encoded.dropped for p in corpus.train_data]
    metadata = {
        "config": config.to_json(),
        "patients": {"train": len(corpus.train_records), "validation": len(corpus.val_records)},
        "situations": {"train": len(corpus.train_data), "validation": len(corpus.val_data)},
        "facts_per_situation": {
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(max(lengths)),
            "dropped_share_max": max(
                p.encoded.dropped / max(len(p.encoded) + p.encoded.dropped, 1) for p in corpus.train_data
            ),
        },
        "pretrain_losses": fitted["pretrain_losses"],
        "finetune": fitted["finetune"],
        "temperature": temperature,
        "pooled_threshold": pooled,
        "timings": timings,
        "validation_patients": sorted(r.reference for r in corpus.val_records),
    }
    version = save_model(
        out_dir,
        model,
        corpus.vocab,
        corpus.labels,
        temperature,
        thresholds,
        config.max_facts,
        metadata,
        activities=config.care_plan_activities,
        reasons=config.coded_reasons,
    )
    metadata["model_version"] = version
    return metadata
