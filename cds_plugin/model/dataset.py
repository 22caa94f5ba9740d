"""From a folder of FHIR patients to model inputs: corpus reading, patient split, situations, masking.

Patients are split by a hash of their reference, never by example, so training and validation patients
never mix and the split is the same on every machine. Each situation (a patient at a reference time) is
linearized and encoded once; a mask is then drawn per epoch and applied by dropping the positions of the
masked considerations' resources (`Prepared.masked`), which is what encoding the masked record would give
(reasons and care-plan links, which `remove_concepts` also strips, are not model positions).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cds_plugin.errors import CdsPluginError, FhirInputError
from cds_plugin.fhir.linearize import Linearization, linearize
from cds_plugin.fhir.ndjson import read_ndjson
from cds_plugin.fhir.reader import read_record
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.facts import EncodedFacts, FactVocabulary
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.task import (
    EXCLUDED,
    KNOWN,
    NEGATIVE,
    POSITIVE_NEW,
    POSITIVE_UNDOCUMENTED,
    Example,
    Situation,
    concept_references,
    draw_mask,
    reference_times,
    remove_concepts,
    situation_at,
)

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


_BUNDLE_SUFFIXES = (".json", ".json.gz")
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")
_PATIENT_FILE = re.compile(r"Patient(?:[._-].*)?")


def bundle_files(data_dir: str | Path) -> list[Path]:
    """Every per-patient bundle under a folder (`.json`, `.json.gz`), sorted for reproducibility.

    NDJSON files are not bundles: `ndjson_exports` lists those (`load_corpus` reads both)."""
    root = Path(data_dir)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.name.endswith(_BUNDLE_SUFFIXES) and p.is_file())
    return [p for p in files if "support" not in p.relative_to(root).parts]


def ndjson_exports(data_dir: str | Path) -> list[tuple[Path, list[Path]]]:
    """The Bulk Data exports under a folder: each folder holding `.ndjson` / `.ndjson.gz` files is one
    export (its own files, in name order, read together; its subfolders are exports of their own), sorted
    by folder. `data_dir` may also be one NDJSON file."""
    root = Path(data_dir)
    if root.is_file():
        return [(root.parent, [root])] if root.name.endswith(_NDJSON_SUFFIXES) else []
    found: dict[Path, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.name.endswith(_NDJSON_SUFFIXES) and p.is_file()):
        if "support" not in path.relative_to(root).parts:
            found.setdefault(path.parent, []).append(path)
    return sorted(found.items())


def load_corpus(data_dir: str | Path, limit: int | None = None, progress: bool = True) -> list[PatientRecord]:
    """Every patient under `data_dir`, per-patient bundles and Bulk Data NDJSON (see
    `load_corpus_with_files`); a file that cannot be read is skipped with a warning naming the file only."""
    return load_corpus_with_files(data_dir, limit, progress)[0]


def load_corpus_with_files(
    data_dir: str | Path, limit: int | None = None, progress: bool = True
) -> tuple[list[PatientRecord], list[Path]]:
    """`load_corpus` and the file each record came from.

    First the per-patient bundles (`.json`, `.json.gz`; `bundle_files`, in path order), then the patients
    of each Bulk Data export (`ndjson_exports`, folder by folder, each sorted by patient reference); the
    same input always gives the same records in the same order. An NDJSON patient's file is its export's
    first Patient file (e.g. `export/Patient.ndjson`), so it lies in the export's folder. An NDJSON
    patient already read (same reference, from a bundle or an earlier export) is left out, with a
    warning. A bundle or an export that cannot be read is skipped with a warning. `limit` caps the
    patients, bundles first.
    Raises FhirInputError when `data_dir` holds neither bundles nor NDJSON files.
    """
    root = Path(data_dir)
    bundles = bundle_files(root)
    exports = ndjson_exports(root)
    if not bundles and not exports:
        if not root.exists():
            raise FhirInputError(f"{root}: no such file or folder", expression=str(root))
        raise FhirInputError(
            f"{root}: no FHIR bundles (.json, .json.gz) nor Bulk Data NDJSON files (.ndjson, .ndjson.gz)",
            expression=str(root),
        )
    if limit is not None:
        bundles = bundles[:limit]
    records: list[PatientRecord] = []
    read: list[Path] = []
    for path in tqdm(bundles, desc="reading FHIR", disable=not progress, unit="patient"):
        try:
            records.append(read_record(path))
            read.append(path)
        except CdsPluginError as exc:
            log.warning("skipping %s: %s", path.name, type(exc).__name__)
    from_bundles = len(records)
    seen = {r.reference for r in records}
    duplicates = 0
    for folder, files in exports:
        if limit is not None and len(records) >= limit:
            break
        name = folder.name if folder == root or root.is_file() else str(folder.relative_to(root))
        try:
            found = read_ndjson(files)
            patients = sorted(
                tqdm(found, desc=f"reading NDJSON {name}", disable=not progress, unit="patient"),
                key=lambda r: r.reference,
            )
        except CdsPluginError as exc:
            where = f" at {exc.expression}" if exc.expression else ""
            log.warning("skipping the NDJSON export in %s: %s%s", name, type(exc).__name__, where)
            continue
        source = next((f for f in files if _PATIENT_FILE.fullmatch(f.name)), files[0])
        for record in patients:
            if limit is not None and len(records) >= limit:
                break
            if record.reference in seen:
                duplicates += 1
                continue
            seen.add(record.reference)
            records.append(record)
            read.append(source)
    if duplicates:
        log.warning("%d NDJSON patient(s) had already been read: the first copy of each is kept", duplicates)
    if exports:
        log.info(
            "%d patients: %d from %d bundle file(s), %d from %d NDJSON export folder(s)",
            len(records),
            from_bundles,
            len(bundles),
            len(records) - from_bundles,
            len(exports),
        )
    return records, read


#: The salt of the shipped model's split; another salt draws another split (repeated validation).
SPLIT_SALT = "cds-plugin-split-v1"


def is_validation(patient_reference: str, fraction: float, salt: str = SPLIT_SALT, fold: int = 0) -> bool:
    """Whether the patient is in fold `fold`'s validation share: the salted hash, read as a number in
    [0, 1), falls in [fold * fraction, (fold + 1) * fraction). Fold 0 is the shipped split; folds 0 to
    1 / fraction - 1 partition the patients (cross-validation: `cds-plugin evaluate` with one model per
    fold)."""
    digest = hashlib.sha256(f"{salt}:{patient_reference}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return fold * fraction <= u < (fold + 1) * fraction


def split_patients(
    records: Sequence[PatientRecord], val_fraction: float, salt: str = SPLIT_SALT, fold: int = 0
) -> tuple[list[PatientRecord], list[PatientRecord]]:
    train = [r for r in records if not is_validation(r.reference, val_fraction, salt, fold)]
    val = [r for r in records if is_validation(r.reference, val_fraction, salt, fold)]
    return train, val


def build_situations(
    records: Iterable[PatientRecord], per_patient: int, seed: int, labels: LabelSpace, progress: bool = False
) -> list[Situation]:
    """Several reference times per patient (chosen with a generator seeded per patient)."""
    out = []
    for record in tqdm(list(records), desc="situations", disable=not progress, unit="patient"):
        rng = random.Random(f"{seed}:{record.reference}")
        out.extend(situation_at(record, t, labels) for t in reference_times(record, per_patient, rng))
    return out


@dataclass(frozen=True)
class Prepared:
    """A situation as model input, before masking (each position carries its consideration, if any)."""

    situation: Situation
    linearization: Linearization
    encoded: EncodedFacts

    def masked(self, hidden: frozenset[int]) -> EncodedFacts:
        """The input with the hidden considerations' resources removed."""
        if not hidden:
            return self.encoded
        return self.encoded.select(~np.isin(self.encoded.concepts - 1, list(hidden)))

    def targets(self, hidden: frozenset[int], n_labels: int) -> np.ndarray:
        """Per-label target codes (IGNORE / NEG / POS_UNDOC / POS_NEW) with `hidden` masked."""
        out = np.full(n_labels, NEG, dtype=np.int8)
        for i, state in self.situation.states(hidden).items():
            out[i] = STATE_CODE[state]
        return out


def prepare(
    situation: Situation, vocab: FactVocabulary, labels: LabelSpace, lin: Linearization | None = None
) -> Prepared:
    """A situation encoded once; `lin` is its record's linearization (default: `linearize`'s defaults;
    a model trained with other options passes its own, `TrainConfig.linearize`)."""
    lin = lin if lin is not None else linearize(situation.record)
    refs = concept_references(situation.record, labels)
    return Prepared(situation, lin, vocab.encode(lin, refs))


def fixed_masks(situations: Sequence[Situation], seed: int, mask_rate: float) -> list[frozenset[int]]:
    """One reproducible mask per situation (evaluation and model selection)."""
    return [
        draw_mask(s, random.Random(f"{seed}:{s.patient}:{s.reference_time.isoformat()}"), mask_rate)
        for s in situations
    ]


def examples_of(
    situations: Sequence[Situation], masks: Sequence[frozenset[int]], labels: LabelSpace
) -> list[Example]:
    """Examples (masked records) for readers of records, such as the logistic-regression baseline."""
    return [
        Example(s, m, remove_concepts(s.record, labels, m)) for s, m in zip(situations, masks, strict=True)
    ]
