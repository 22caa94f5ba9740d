"""A trained model on disk: what `train` writes and `Engine.load` reads.

model.safetensors   network weights (encoder + head)
config.json         encoder config, label count, max input length, format version
tokenizer.json      the tokenizer (tokenizers library format)
labels.json         label space: kind, system, code, display, positive training examples
calibration.json    temperature (probabilities are sigmoid(logit / temperature))
thresholds.json     per-label decision thresholds chosen on validation
training.json       training configuration, data counts, timings, validation patients
MODEL_VERSION       name-sha256(weights)[:12]: names the model in cards, logs and explanations
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from cds_plugin.model.dataset import LabelSpace
from cds_plugin.model.network import CdsNetwork
from cds_plugin.model.tokenizer import FactTokenizer

FORMAT_VERSION = 1
REQUIRED_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "labels.json",
    "calibration.json",
    "thresholds.json",
)


class ModelLoadError(ValueError):
    """A model folder that cannot be used; the message names the folder and the problem."""


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(
    out_dir: str | Path,
    network: CdsNetwork,
    tokenizer: FactTokenizer,
    labels: LabelSpace,
    temperature: float,
    thresholds: list[float],
    max_length: int,
    metadata: dict[str, Any],
    fact_style: str = "codes",
    name: str = "cds-plugin",
) -> str:
    """Write every artifact; returns the model version."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12]
    version = f"{name}-{digest}"
    _write_json(
        out / "config.json",
        {
            "format_version": FORMAT_VERSION,
            "encoder": network.encoder.config.to_dict(),
            "n_labels": len(labels),
            "max_length": max_length,
            "fact_style": fact_style,
            "pooling": network.pooling,
        },
    )
    tokenizer.save(out)
    _write_json(out / "labels.json", labels.to_json())
    _write_json(out / "calibration.json", {"method": "temperature", "temperature": temperature})
    _write_json(
        out / "thresholds.json",
        {"thresholds": [round(t, 6) for t in thresholds], "chosen_by": "max F1 on validation"},
    )
    _write_json(out / "training.json", metadata)
    (out / "MODEL_VERSION").write_text(version + "\n")
    (out / "MODEL_CARD.md").write_text(model_card_text(version, labels, metadata, temperature))
    return version


def model_card_text(version: str, labels: LabelSpace, metadata: dict[str, Any], temperature: float) -> str:
    """A short model card written with every trained model; `cds-plugin evaluate` adds the figures."""
    config = metadata.get("config", {})
    fit = metadata.get("finetune", {})
    kinds = {"diagnosis": 0, "treatment": 0}
    for key in labels.labels:
        kinds[key.kind] = kinds.get(key.kind, 0) + 1
    lines = [
        f"# Model card: {version}",
        "",
        "Proposes diagnosis and treatment considerations from a patient's FHIR record. Trained on",
        "synthetic data unless stated otherwise below. **Not for clinical use.**",
        "",
        "## Training",
        f"- patients: {metadata.get('patients')}; examples: {metadata.get('examples')}",
        f"- base: {metadata.get('base') or 'BERT-style encoder trained from scratch'}",
        f"- input: {config.get('max_length')} tokens, pooling {config.get('pooling')}, "
        f"fact style {config.get('fact_style')}",
        f"- labels: {len(labels)} ({kinds['diagnosis']} diagnoses, {kinds['treatment']} treatments), "
        f"each with at least {labels.min_positive} positive training examples",
        f"- best validation macro AUPRC: {fit.get('best_val_macro_auprc', float('nan')):.3f} "
        f"at epoch {fit.get('best_epoch')}",
        f"- calibration: temperature {temperature:.3f}; thresholds: max F1 on validation",
        "",
        "Run `cds-plugin evaluate --model DIR --data DIR` for AUROC, AUPRC, recall@5 and calibration beside",
        "the prevalence and logistic-regression baselines, by subgroup. See docs/model-card.md for the",
        "task definition and limits.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class LoadedModel:
    network: CdsNetwork
    tokenizer: FactTokenizer
    labels: LabelSpace
    temperature: float
    thresholds: list[float]
    max_length: int
    fact_style: str
    version: str
    path: Path


def load_model(path: str | Path) -> LoadedModel:
    folder = Path(path)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"{folder}: not a cds-plugin model folder (missing {', '.join(missing)})")
    config = json.loads((folder / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{folder}: model format {config.get('format_version')} is not {FORMAT_VERSION}")
    labels = LabelSpace.from_json(json.loads((folder / "labels.json").read_text()))
    if len(labels) != config["n_labels"]:
        raise ModelLoadError(
            f"{folder}: labels.json has {len(labels)} labels, config says {config['n_labels']}"
        )
    network = CdsNetwork.from_encoder_config(
        config["encoder"], config["n_labels"], config.get("pooling", "mean")
    )
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".pooler." not in k]  # a base's pooler is never used
    unexpected = [k for k in unexpected if ".pooler." not in k]
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    network.eval()
    thresholds = json.loads((folder / "thresholds.json").read_text())["thresholds"]
    if len(thresholds) != len(labels):
        raise ModelLoadError(f"{folder}: thresholds.json does not match the labels")
    version_file = folder / "MODEL_VERSION"
    version = version_file.read_text().strip() if version_file.exists() else folder.name
    return LoadedModel(
        network=network,
        tokenizer=FactTokenizer.load(folder),
        labels=labels,
        temperature=float(json.loads((folder / "calibration.json").read_text())["temperature"]),
        thresholds=[float(t) for t in thresholds],
        max_length=int(config["max_length"]),
        fact_style=config.get("fact_style", "text"),
        version=version,
        path=folder,
    )
