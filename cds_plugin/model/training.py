"""Training: tokenizer from the corpus, masked-fact pretraining, fine-tuning, calibration, thresholds.

`train()` is seeded and reproducible on one machine (one torch thread per process is set by the CLI
when asked for; results can differ across CPU types in the last digits). It writes a model folder that
`Engine.load(path)` reads; see `artifacts.py` for its files.
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

from cds_plugin.fhir.linearize import linearize
from cds_plugin.model.artifacts import save_model
from cds_plugin.model.dataset import (
    IGNORE,
    EncodedExample,
    LabelSpace,
    build_examples,
    encode_examples,
    fact_texts,
    load_corpus,
    split_patients,
)
from cds_plugin.model.network import CdsNetwork, MaskedFactModel, NetworkConfig
from cds_plugin.model.tokenizer import SPECIAL_TOKENS, FactTokenizer  # specials are our first ids

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides a trained model. Defaults are the shipped model's (docs/model-card.md)."""

    seed: int = 13
    val_fraction: float = 0.2
    per_patient: int = 4  # reference times per patient
    mask_rate: float = 0.5  # share of concepts active at T hidden from the input
    min_positive: int = 10  # positive training examples a concept needs to become a label
    max_length: int = 256
    pooling: str = "max"
    fact_style: str = "codes"  # how facts are shown to the model (see dataset.model_text)
    vocab_size: int = 6000
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pretrain_epochs: int = 0  # masked-fact pretraining measured not to help at this budget (model card)
    pretrain_fact_rate: float = 0.15
    finetune_epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    base_lr: float = 5e-5  # learning rate of a pretrained `--base` encoder
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    limit_patients: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """A configuration that trains in seconds (tests and CI)."""
        config = cls(
            per_patient=2,
            min_positive=1,
            max_length=128,
            vocab_size=500,
            network=NetworkConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
            ),
            pretrain_epochs=1,
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


def batches(
    items: Sequence[EncodedExample], batch_size: int, rng: random.Random | None
) -> list[list[EncodedExample]]:
    """Length-bucketed batches (little padding); batch order shuffled when `rng` is given."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].encoded))
    groups = [[items[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def _schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def mask_facts(
    ids: torch.Tensor,
    spans: Sequence[tuple[int, int, int]],
    rate: float,
    tokenizer: FactTokenizer,
    rng: random.Random,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-fact modelling: hide whole facts (80 % [MASK], 10 % random tokens, 10 % kept)."""
    inputs = ids.clone()
    labels = torch.full_like(ids, -100)
    chosen = [s for s in spans if rng.random() < rate] or ([rng.choice(spans)] if spans else [])
    for start, end, _ in chosen:
        labels[start:end] = ids[start:end]
        roll = rng.random()
        if roll < 0.8:
            inputs[start:end] = tokenizer.mask_id
        elif roll < 0.9:
            inputs[start:end] = torch.randint(len(SPECIAL_TOKENS), tokenizer.vocab_size, (end - start,))
    return inputs, labels


def pretrain(
    network: CdsNetwork,
    data: Sequence[EncodedExample],
    tokenizer: FactTokenizer,
    config: TrainConfig,
    progress: bool,
) -> list[float]:
    """Masked-fact pretraining of the encoder; returns the mean loss per epoch."""
    model = MaskedFactModel(network.encoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed + 1)
    steps = config.pretrain_epochs * math.ceil(len(data) / config.batch_size)
    scheduler = _schedule(optimizer, steps, int(steps * config.warmup_fraction))
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    losses = []
    model.train()
    for epoch in range(config.pretrain_epochs):
        total, n = 0.0, 0
        for group in tqdm(
            batches(data, config.batch_size, rng), desc=f"pretrain {epoch + 1}", disable=not progress
        ):
            ids, mask = tokenizer.batch([g.encoded for g in group])
            inputs = ids.clone()
            labels = torch.full_like(ids, -100)
            for row, g in enumerate(group):
                inputs[row], labels[row] = mask_facts(
                    ids[row], g.encoded.spans, config.pretrain_fact_rate, tokenizer, rng
                )
            positions = labels != -100
            loss = loss_fn(model(inputs, mask, positions), labels[positions])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            n += 1
        losses.append(total / max(n, 1))
        log.info("pretrain epoch %d: loss %.4f", epoch + 1, losses[-1])
    return losses


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the labels that are questions for this example (targets != IGNORE)."""
    keep = targets != IGNORE
    if not keep.any():
        return logits.sum() * 0.0
    positive = (targets > 0).float()
    losses = nn.functional.binary_cross_entropy_with_logits(logits, positive, reduction="none")
    return losses[keep].mean()


@torch.no_grad()
def predict_logits(
    network: CdsNetwork, data: Sequence[EncodedExample], tokenizer: FactTokenizer, batch_size: int = 32
) -> np.ndarray:
    """Logits for every example, in the order given."""
    network.eval()
    out = np.zeros((len(data), network.head.out_features), dtype=np.float32)
    order = sorted(range(len(data)), key=lambda i: len(data[i].encoded))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        ids, mask = tokenizer.batch([data[i].encoded for i in idx])
        out[idx] = network(ids, mask).numpy()
    return out


def targets_matrix(data: Sequence[EncodedExample]) -> np.ndarray:
    return np.stack([d.targets.numpy() for d in data]).astype(np.int8)


def finetune(
    network: CdsNetwork,
    train_data: Sequence[EncodedExample],
    val_data: Sequence[EncodedExample],
    tokenizer: FactTokenizer,
    config: TrainConfig,
    pretrained_base: bool,
    progress: bool,
    score: Callable[[np.ndarray, np.ndarray], float],
) -> dict[str, Any]:
    """Fine-tune on the task; keeps the epoch with the best validation score (macro AUPRC)."""
    head_params = list(network.head.parameters())
    encoder_params = [p for n, p in network.named_parameters() if not n.startswith("head.")]
    encoder_lr = config.base_lr if pretrained_base else config.lr
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": encoder_lr}, {"params": head_params, "lr": config.lr}],
        weight_decay=config.weight_decay,
    )
    rng = random.Random(config.seed + 2)
    steps = config.finetune_epochs * math.ceil(len(train_data) / config.batch_size)
    scheduler = _schedule(optimizer, steps, int(steps * config.warmup_fraction))
    val_targets = targets_matrix(val_data)
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None}
    history = []
    for epoch in range(config.finetune_epochs):
        network.train()
        total, n = 0.0, 0
        for group in tqdm(
            batches(train_data, config.batch_size, rng), desc=f"fine-tune {epoch + 1}", disable=not progress
        ):
            ids, mask = tokenizer.batch([g.encoded for g in group])
            targets = torch.stack([g.targets for g in group]).long()
            loss = masked_bce(network(ids, mask), targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            n += 1
        logits = predict_logits(network, val_data, tokenizer)
        val_score = score(logits, val_targets)
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "val_macro_auprc": val_score})
        log.info(
            "fine-tune epoch %d: loss %.4f, validation macro AUPRC %.4f",
            epoch + 1,
            total / max(n, 1),
            val_score,
        )
        if val_score > best["score"]:
            best = {
                "score": val_score,
                "epoch": epoch + 1,
                "state": {k: v.detach().clone() for k, v in network.state_dict().items()},
            }
    if best["state"] is not None:
        network.load_state_dict(best["state"])
    return {"history": history, "best_epoch": best["epoch"], "best_val_macro_auprc": best["score"]}


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature scaling on validation: one T for all labels, minimizing the masked NLL.

    A grid over log T in [0.05, 20] (then refined around the best point): deterministic and never
    diverges, unlike gradient fits on small validation sets.
    """
    keep = targets != IGNORE
    if not keep.any():
        return 1.0
    z = logits[keep].astype(np.float64)
    y = (targets[keep] > 0).astype(np.float64)

    def nll(t: float) -> float:
        s = z / t
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = min(grid, key=nll)
    fine = np.exp(np.linspace(np.log(best) - 0.06, np.log(best) + 0.06, 41))
    return float(min(fine, key=nll))


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


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    base: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model on a folder of per-patient FHIR bundles and write it to `out_dir`."""
    from cds_plugin.model.evaluation import macro_auprc_of_logits

    config = config or TrainConfig()
    started = time.perf_counter()
    seed_everything(config.seed)
    records = load_corpus(data_dir, limit=config.limit_patients, progress=progress)
    if len(records) < 2:
        raise ValueError(f"need at least 2 readable patients under {data_dir}, found {len(records)}")
    train_records, val_records = split_patients(records, config.val_fraction)
    if not val_records:  # tiny corpora: keep the split by patient all the same
        val_records, train_records = train_records[-1:], train_records[:-1]
    train_examples = build_examples(train_records, config.per_patient, config.mask_rate, config.seed)
    val_examples = build_examples(val_records, config.per_patient, config.mask_rate, config.seed + 100)
    if not train_examples or not val_examples:
        raise ValueError("no reference time with a year of follow-up was found; more data is needed")
    labels = LabelSpace.from_examples(train_examples, config.min_positive)
    if not len(labels):
        raise ValueError(f"no concept has {config.min_positive} positive training examples")
    log.info(
        "%d patients (%d train, %d validation), %d + %d examples, %d labels",
        len(records),
        len(train_records),
        len(val_records),
        len(train_examples),
        len(val_examples),
        len(labels),
    )
    train_lins = [linearize(ex.record) for ex in train_examples]
    style = "text" if base is not None else config.fact_style
    if base is not None:
        tokenizer = FactTokenizer.from_pretrained(base)
    else:
        texts = (t for lin in train_lins for t in fact_texts(lin, style))
        tokenizer = FactTokenizer.train(texts, vocab_size=config.vocab_size)
    train_data = encode_examples(
        train_examples,
        labels,
        tokenizer,
        config.max_length,
        progress=progress,
        linearizations=train_lins,
        style=style,
    )
    val_data = encode_examples(val_examples, labels, tokenizer, config.max_length, style=style)
    timings = {"prepare_s": time.perf_counter() - started}

    if base is not None:
        network = CdsNetwork.from_base(base, len(labels), pooling=config.pooling)
        pretrain_losses: list[float] = []
    else:
        net_config = NetworkConfig(
            **{
                **asdict(config.network),
                "vocab_size": tokenizer.vocab_size,
                "max_position_embeddings": config.max_length,
            }
        )
        network = CdsNetwork.from_scratch(net_config, len(labels), pooling=config.pooling)
        t0 = time.perf_counter()
        pretrain_losses = (
            pretrain(network, train_data, tokenizer, config, progress) if config.pretrain_epochs else []
        )
        timings["pretrain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = finetune(
        network, train_data, val_data, tokenizer, config, base is not None, progress, macro_auprc_of_logits
    )
    timings["finetune_s"] = time.perf_counter() - t0

    val_logits = predict_logits(network, val_data, tokenizer)
    val_targets = targets_matrix(val_data)
    temperature = fit_temperature(val_logits, val_targets)
    thresholds, pooled = choose_thresholds(sigmoid(val_logits / temperature), val_targets)
    timings["total_s"] = time.perf_counter() - started
    metadata = {
        "config": config.to_json(),
        "base": str(base) if base is not None else None,
        "patients": {"train": len(train_records), "validation": len(val_records)},
        "examples": {"train": len(train_examples), "validation": len(val_examples)},
        "pretrain_losses": pretrain_losses,
        "finetune": {k: v for k, v in fit.items()},
        "temperature": temperature,
        "pooled_threshold": pooled,
        "timings": timings,
        "validation_patients": sorted(r.reference for r in val_records),
    }
    version = save_model(
        out_dir, network, tokenizer, labels, temperature, thresholds, config.max_length, metadata, style
    )
    metadata["model_version"] = version
    return metadata
