"""From a folder of FHIR patients to encoded examples: corpus reading, patient split, label space.

Patients are split by a hash of their reference, never by example, so training and validation
patients never mix and the split is the same on every machine.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir.linearize import Linearization, Segment, linearize
from cds_plugin.fhir.reader import read_record
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.concepts import DIAGNOSIS, ConceptKey
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


#: Short prefixes of code systems for code tokens (`sct73211009`, `loinc4548_4`, `rx316049`).
CODE_PREFIX = {
    "http://snomed.info/sct": "sct",
    "http://loinc.org": "loinc",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "rx",
    "http://hl7.org/fhir/sid/cvx": "cvx",
}
#: Share of the model input each resource type may fill before the others had their turn.
TYPE_SHARES = {
    "Patient": 0.02,
    "Condition": 0.22,
    "MedicationRequest": 0.15,
    "AllergyIntolerance": 0.04,
    "Observation": 0.27,
    "Procedure": 0.10,
    "Immunization": 0.04,
    "Encounter": 0.10,
    "CarePlan": 0.06,
}
FACT_STYLES = ("codes", "text")


def model_text(segment: Segment, style: str = "codes") -> str:
    """The text the model reads for one fact.

    "codes": the concept's display is replaced by one code token (e.g. "lab: loinc4548_4 6.19 % high;
    5y ago"): half the tokens of the words, so about twice the facts fit in the input; the display
    stays in the segment for people. "text": the segment's words as they are (for `--base` checkpoints
    whose vocabulary knows words, not our codes).
    """
    if style == "text" or not segment.code or not segment.display or segment.display not in segment.text:
        return segment.text
    system, _, code = segment.code.rpartition("|")
    token = CODE_PREFIX.get(system, "code") + re.sub(r"[^A-Za-z0-9]", "_", code)
    return segment.text.replace(segment.display, token, 1)


def fact_texts(linearization: Linearization, style: str = "codes") -> list[str]:
    return [model_text(segment, style) for segment in linearization.segments]


def type_budgets(max_length: int) -> dict[str, int]:
    return {kind: int(share * (max_length - 2)) for kind, share in TYPE_SHARES.items()}


def encode_linearization(
    lin: Linearization, tokenizer: FactTokenizer, max_length: int, style: str = "codes"
) -> EncodedInput:
    kinds = [segment.resource_type for segment in lin.segments]
    return tokenizer.encode_facts(fact_texts(lin, style), max_length, kinds, type_budgets(max_length))


def encode_record(
    record: PatientRecord, tokenizer: FactTokenizer, max_length: int, style: str = "codes"
) -> tuple[EncodedInput, Linearization]:
    lin = linearize(record)
    return encode_linearization(lin, tokenizer, max_length, style), lin


def encode_examples(
    examples: Sequence[Example],
    labels: LabelSpace,
    tokenizer: FactTokenizer,
    max_length: int,
    keep_examples: bool = False,
    progress: bool = False,
    linearizations: Sequence[Linearization] | None = None,
    style: str = "codes",
) -> list[EncodedExample]:
    """Encode examples; pass `linearizations` (one per example) when they were already computed."""
    out = []
    for n, ex in enumerate(tqdm(examples, desc="encoding", disable=not progress, unit="example")):
        lin = linearizations[n] if linearizations is not None else linearize(ex.record)
        encoded = encode_linearization(lin, tokenizer, max_length, style)
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
