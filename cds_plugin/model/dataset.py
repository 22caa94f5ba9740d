"""From a folder of FHIR patients to encoded examples: corpus reading, patient split, label space.

Patients are split by a hash of their reference, never by example, so training and validation
patients never mix and the split is the same on every machine.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir.linearize import Linearization, linearize
from cds_plugin.fhir.reader import read_record
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.concepts import DIAGNOSIS, TREATMENT, ConceptKey
from cds_plugin.model.task import (
    EXCLUDED,
    KNOWN,
    NEGATIVE,
    POSITIVE_NEW,
    POSITIVE_UNDOCUMENTED,
    Example,
    make_example,
    reference_times,
)
from cds_plugin.model.tokenizer import EncodedInput, FactTokenizer

log = logging.getLogger(__name__)

#: Per-label target codes in encoded examples (the loss ignores IGNORE).
IGNORE, NEG, POS_UNDOC, POS_NEW = -1, 0, 1, 2
STATE_CODE = {
    NEGATIVE: NEG,
    POSITIVE_UNDOCUMENTED: POS_UNDOC,
    POSITIVE_NEW: POS_NEW,
    KNOWN: IGNORE,
    EXCLUDED: IGNORE,
}


def bundle_files(data_dir: str | Path) -> list[Path]:
    """Every per-patient bundle under a folder (`.json`, `.json.gz`), sorted for reproducibility."""
    root = Path(data_dir)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.name.endswith((".json", ".json.gz")) and p.is_file())
    return [p for p in files if "support" not in p.relative_to(root).parts]


def load_corpus(data_dir: str | Path, limit: int | None = None, progress: bool = True) -> list[PatientRecord]:
    """Read every patient; a file that cannot be read is skipped with a warning naming the file only."""
    files = bundle_files(data_dir)
    if limit is not None:
        files = files[:limit]
    records = []
    for path in tqdm(files, desc="reading FHIR", disable=not progress, unit="patient"):
        try:
            records.append(read_record(path))
        except CdsPluginError as exc:
            log.warning("skipping %s: %s", path.name, type(exc).__name__)
    return records


def is_validation(patient_reference: str, fraction: float, salt: str = "cds-plugin-split-v1") -> bool:
    digest = hashlib.sha256(f"{salt}:{patient_reference}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_patients(
    records: Sequence[PatientRecord], val_fraction: float
) -> tuple[list[PatientRecord], list[PatientRecord]]:
    train = [r for r in records if not is_validation(r.reference, val_fraction)]
    val = [r for r in records if is_validation(r.reference, val_fraction)]
    return train, val


def build_examples(
    records: Iterable[PatientRecord],
    per_patient: int,
    mask_rate: float,
    seed: int,
    progress: bool = False,
) -> list[Example]:
    """Several reference times per patient, each with its own random masking (seeded per patient)."""
    examples = []
    for record in tqdm(list(records), desc="building examples", disable=not progress, unit="patient"):
        rng = random.Random(f"{seed}:{record.reference}")
        for t in reference_times(record, per_patient, rng):
            examples.append(make_example(record, t, rng, mask_rate))
    return examples


@dataclass
class LabelSpace:
    """The labels the model predicts: concepts with enough positive training examples."""

    labels: list[ConceptKey]
    positives: dict[str, int] = field(default_factory=dict)  # concept id -> positive training examples
    min_positive: int = 10

    def __post_init__(self) -> None:
        self.index = {k.id: i for i, k in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_examples(cls, examples: Sequence[Example], min_positive: int) -> LabelSpace:
        counts: Counter[str] = Counter()
        keys: dict[str, ConceptKey] = {}
        displays: dict[str, Counter[str]] = {}
        for ex in examples:
            for cid, state in ex.states.items():
                if state in (POSITIVE_UNDOCUMENTED, POSITIVE_NEW):
                    counts[cid] += 1
                    keys[cid] = ex.concepts[cid]
                    displays.setdefault(cid, Counter())[ex.concepts[cid].display] += 1
        chosen = sorted(
            (cid for cid, n in counts.items() if n >= min_positive),
            key=lambda cid: (keys[cid].kind != DIAGNOSIS, -counts[cid], cid),
        )
        labels = []
        for cid in chosen:
            key = keys[cid]
            display = displays[cid].most_common(1)[0][0]
            labels.append(ConceptKey(key.kind, key.system, key.code, display))
        return cls(labels=labels, positives={cid: counts[cid] for cid in chosen}, min_positive=min_positive)

    def kind_indices(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.labels) if k.kind == kind]

    def to_json(self) -> dict:
        return {
            "min_positive": self.min_positive,
            "labels": [
                {
                    "id": k.id,
                    "kind": k.kind,
                    "system": k.system,
                    "code": k.code,
                    "display": k.display,
                    "positives": self.positives.get(k.id, 0),
                }
                for k in self.labels
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> LabelSpace:
        labels = [ConceptKey(d["kind"], d["system"], d["code"], d["display"]) for d in data["labels"]]
        return cls(
            labels=labels,
            positives={d["id"]: d.get("positives", 0) for d in data["labels"]},
            min_positive=data.get("min_positive", 0),
        )


@dataclass
class EncodedExample:
    """Model input of one example with per-label target codes (IGNORE / NEG / POS_UNDOC / POS_NEW)."""

    encoded: EncodedInput
    targets: torch.Tensor  # int8, shape (n_labels,)
    example: Example | None = None
    linearization: Linearization | None = None


def fact_texts(linearization: Linearization) -> list[str]:
    return [segment.text for segment in linearization.segments]


def encode_record(
    record: PatientRecord, tokenizer: FactTokenizer, max_length: int
) -> tuple[EncodedInput, Linearization]:
    lin = linearize(record)
    return tokenizer.encode_facts(fact_texts(lin), max_length), lin


def encode_examples(
    examples: Sequence[Example],
    labels: LabelSpace,
    tokenizer: FactTokenizer,
    max_length: int,
    keep_examples: bool = False,
    progress: bool = False,
    linearizations: Sequence[Linearization] | None = None,
) -> list[EncodedExample]:
    """Encode examples; pass `linearizations` (one per example) when they were already computed."""
    out = []
    for n, ex in enumerate(tqdm(examples, desc="encoding", disable=not progress, unit="example")):
        lin = linearizations[n] if linearizations is not None else linearize(ex.record)
        encoded = tokenizer.encode_facts(fact_texts(lin), max_length)
        targets = torch.full((len(labels),), NEG, dtype=torch.int8)
        for cid, state in ex.states.items():
            i = labels.index.get(cid)
            if i is not None:
                targets[i] = STATE_CODE[state]
        out.append(
            EncodedExample(
                encoded=encoded,
                targets=targets,
                example=ex if keep_examples else None,
                linearization=lin if keep_examples else None,
            )
        )
    return out


KINDS = (DIAGNOSIS, TREATMENT)
