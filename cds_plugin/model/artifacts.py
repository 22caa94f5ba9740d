"""A trained model on disk: what `train` writes and `Engine.load` reads.

model.safetensors   network weights (Hugging Face `save_pretrained`, safetensors)
config.json         the network's `CdsFactsConfig` (Hugging Face)
cds_plugin.json     format version, facts kept at most
facts.json          fact vocabulary: codes, kinds, per-code value bins and units, displays
labels.json         label space: the considerations (codes, plausibility) and positive training examples
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

from cds_plugin.fhir.linearize import Linearization, linearize
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.facts import FactVocabulary
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.network import CdsFactsModel

FORMAT_VERSION = 2
REQUIRED_FILES = (
    "model.safetensors",
    "config.json",
    "cds_plugin.json",
    "facts.json",
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
    model: CdsFactsModel,
    vocab: FactVocabulary,
    labels: LabelSpace,
    temperature: float,
    thresholds: list[float],
    max_facts: int,
    metadata: dict[str, Any],
    name: str = "cds-plugin",
    activities: bool = False,
    reasons: bool = False,
) -> str:
    """Write every artifact; returns the model version."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12]
    version = f"{name}-{digest}"
    _write_json(
        out / "cds_plugin.json",
        {
            "format_version": FORMAT_VERSION,
            "max_facts": max_facts,
            "care_plan_activities": activities,
            "coded_reasons": reasons,
        },
    )
    _write_json(out / "facts.json", vocab.to_json())
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
        f"- patients: {_counts(metadata.get('patients'))}; situations (patient x reference time): "
        f"{_counts(metadata.get('situations'))}",
        f"- network: {_counts(config.get('network'))}",
        f"- input: one position per FHIR fact, at most {config.get('max_facts')} (most recent first)"
        + "".join(
            f"; {what} as positions of their own"
            for key, what in (
                ("care_plan_activities", "coded care-plan activities"),
                ("coded_reasons", "coded encounter and procedure reasons"),
            )
            if config.get(key)
        ),
        f"- labels: {len(labels)} ({kinds['diagnosis']} diagnoses, {kinds['treatment']} treatments), "
        "curated in labels.toml",
        f"- pretraining epochs: {config.get('pretrain_epochs')}; best validation selection score: "
        f"{fit.get('best_val_score', float('nan')):.3f} at epoch {fit.get('best_epoch')}",
        f"- calibration: temperature {temperature:.3f}; thresholds: max F1 on validation",
        "",
        "Run `cds-plugin evaluate --model DIR --data DIR` for AUROC, AUPRC, recall@5 and calibration beside",
        "the prevalence and logistic-regression baselines, by subgroup. See docs/model-card.md for the",
        "task definition and limits.",
        "",
    ]
    return "\n".join(lines)


def _counts(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


@dataclass
class LoadedModel:
    network: CdsFactsModel
    vocab: FactVocabulary
    labels: LabelSpace
    temperature: float
    thresholds: list[float]
    max_facts: int
    version: str
    path: Path
    care_plan_activities: bool = False  # the linearization it was trained on (fhir.linearize)
    coded_reasons: bool = False

    def linearize(self, record: PatientRecord) -> Linearization:
        """A record as this model reads it (the options it was trained with)."""
        return linearize(
            record, max_facts=self.max_facts, activities=self.care_plan_activities, reasons=self.coded_reasons
        )


def load_model(path: str | Path) -> LoadedModel:
    folder = Path(path)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"{folder}: not a cds-plugin model folder (missing {', '.join(missing)})")
    meta = json.loads((folder / "cds_plugin.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{folder}: model format {meta.get('format_version')} is not {FORMAT_VERSION}")
    labels = LabelSpace.from_json(json.loads((folder / "labels.json").read_text()))
    try:
        network = CdsFactsModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{folder}: weights do not load ({type(exc).__name__})") from None
    if network.config.n_labels != len(labels):
        raise ModelLoadError(
            f"{folder}: labels.json has {len(labels)} labels, the network {network.config.n_labels}"
        )
    network.eval()
    vocab = FactVocabulary.from_json(json.loads((folder / "facts.json").read_text()))
    if vocab.n_codes != network.config.n_codes:
        raise ModelLoadError(f"{folder}: facts.json does not match the network's code table")
    thresholds = json.loads((folder / "thresholds.json").read_text())["thresholds"]
    if len(thresholds) != len(labels):
        raise ModelLoadError(f"{folder}: thresholds.json does not match the labels")
    version_file = folder / "MODEL_VERSION"
    version = version_file.read_text().strip() if version_file.exists() else folder.name
    return LoadedModel(
        network=network,
        vocab=vocab,
        labels=labels,
        temperature=float(json.loads((folder / "calibration.json").read_text())["temperature"]),
        thresholds=[float(t) for t in thresholds],
        max_facts=int(meta["max_facts"]),
        version=version,
        path=folder,
        care_plan_activities=bool(meta.get("care_plan_activities", False)),
        coded_reasons=bool(meta.get("coded_reasons", False)),
    )
