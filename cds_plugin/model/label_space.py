"""The label space as data: which considerations the model asks about, read from `labels.toml`.

A clinician curates the file (cds_plugin/model/labels.toml, its header says how): each consideration has
a preferred code, a display, its kind, *every member code* that means the same thing in the data, a
rationale and the sexes and ages it can apply to. Everything else seen in training is listed as excluded,
with the reason. A Condition belongs to a diagnosis consideration when one of its SNOMED CT codes is a
member; a MedicationRequest to a treatment consideration when its RxNorm code is a member, or, for
products the file does not list, when its ingredient (read from the display) is one of the
consideration's `ingredients`. A trained model carries its own copy (labels.json), so editing the file
changes nothing until the next `cds-plugin train`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_plugin.fhir.record import Concept, Condition, MedicationRequest
from cds_plugin.model.concepts import DIAGNOSIS, KINDS, RXNORM, SNOMED, TREATMENT, ingredient_name

DEFAULT_LABELS_FILE = Path(__file__).with_name("labels.toml")
FORMAT = 1
SEXES = ("female", "male")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True, slots=True)
class Label:
    """One consideration: what a card proposes, and which codes in the data mean it."""

    kind: str  # "diagnosis" | "treatment"
    system: str
    code: str  # preferred code: SNOMED CT concept (diagnoses), RxNorm ingredient (treatments)
    display: str
    codes: tuple[str, ...]  # member codes (same system)
    ingredients: tuple[str, ...] = ()
    rationale: str = ""
    sexes: tuple[str, ...] = SEXES
    min_age: float = 0.0
    max_age: float = 120.0
    #: ids (`kind:code`) of considerations that, when documented, make this one pointless or unsafe to
    #: suggest (prediabetes beside documented diabetes; verapamil beside heart failure), and why
    not_with: tuple[str, ...] = ()
    not_with_reason: str = ""

    @property
    def id(self) -> str:
        """Stable identifier: `kind:code`."""
        return f"{self.kind}:{self.code}"

    def plausible(self, sex: str | None, age: float | None) -> bool:
        """Whether the consideration can apply to a patient of this sex and age (unknowns pass)."""
        if sex in SEXES and sex not in self.sexes:
            return False
        return age is None or self.min_age <= age <= self.max_age

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "system": self.system,
            "code": self.code,
            "display": self.display,
            "codes": list(self.codes),
            "ingredients": list(self.ingredients),
            "rationale": self.rationale,
            "sexes": list(self.sexes),
            "min_age": self.min_age,
            "max_age": self.max_age,
            "not_with": list(self.not_with),
            "not_with_reason": self.not_with_reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Label:
        return cls(
            kind=data["kind"],
            system=data["system"],
            code=str(data["code"]),
            display=data["display"],
            codes=tuple(str(c) for c in data.get("codes", [data["code"]])),
            ingredients=tuple(data.get("ingredients", ())),
            rationale=data.get("rationale", ""),
            sexes=tuple(data.get("sexes", SEXES)),
            min_age=float(data.get("min_age", 0.0)),
            max_age=float(data.get("max_age", 120.0)),
            not_with=tuple(data.get("not_with", ())),
            not_with_reason=data.get("not_with_reason", ""),
        )


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Codes seen in the data that are deliberately not considerations, and why."""

    kind: str
    system: str
    codes: tuple[str, ...]
    display: str
    reason: str


@dataclass
class LabelSpace:
    """The considerations of a model, in output order, with the lookups the task and services need."""

    labels: list[Label]
    excluded: list[Exclusion] = field(default_factory=list)
    positives: dict[str, int] = field(default_factory=dict)  # label id -> positive training examples

    def __post_init__(self) -> None:
        self.index = {label.id: i for i, label in enumerate(self.labels)}
        self._member: dict[tuple[str, str], int] = {}
        self._ingredient: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            for code in label.codes:
                key = (label.kind, code)
                if key in self._member:
                    other = self.labels[self._member[key]].display
                    raise LabelFileError(f"code {code} is a member of both {other!r} and {label.display!r}")
                self._member[key] = i
            for name in label.ingredients:
                self._ingredient.setdefault(name, i)
        self._excluded = {(e.kind, code) for e in self.excluded for code in e.codes}

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __getitem__(self, i: int) -> Label:
        return self.labels[i]

    def kind_indices(self, kind: str) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label.kind == kind]

    def find(self, text: str) -> int | None:
        """The consideration a user names: its `kind:code`, preferred code, a member code, its display or
        `kind:display` (displays case-insensitive); None when nothing or several considerations match."""
        for candidates in (
            [i for i, label in enumerate(self.labels) if text == label.id],
            [i for i, label in enumerate(self.labels) if text == label.code],
            [i for i, label in enumerate(self.labels) if text in label.codes],
            [i for i, label in enumerate(self.labels) if text.casefold() == label.display.casefold()],
            [
                i
                for i, label in enumerate(self.labels)
                if text.casefold() == f"{label.kind}:{label.display}".casefold()
            ],
        ):
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                return None
        return None

    def is_excluded(self, kind: str, code: str) -> bool:
        return (kind, code) in self._excluded

    def of_condition(self, condition: Condition) -> int | None:
        """The diagnosis consideration a Condition states (index), or None."""
        return self._of_concept(DIAGNOSIS, SNOMED, condition.code)

    def of_medication(self, concept: Concept | None) -> int | None:
        """The treatment consideration of a medication concept (index), or None.

        A listed RxNorm product first; else, unless the product is listed as excluded, the ingredient read
        from the display (a strength or brand the training data never had still finds its ingredient).
        """
        found = self._of_concept(TREATMENT, RXNORM, concept)
        if found is not None or concept is None:
            return found
        if any(self.is_excluded(TREATMENT, code) for code in concept.codes(RXNORM)):
            return None
        for text in [c.display for c in concept.codings if c.display] + [concept.text or ""]:
            name = ingredient_name(text) if text else None
            if name is not None and name in self._ingredient:
                return self._ingredient[name]
        return None

    def of_request(self, request: MedicationRequest) -> int | None:
        return self.of_medication(request.code)

    def _of_concept(self, kind: str, system: str, concept: Concept | None) -> int | None:
        if concept is None:
            return None
        for code in concept.codes(system):
            i = self._member.get((kind, code))
            if i is not None:
                return i
        return None

    # --- files ----------------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> LabelSpace:
        """Read and check a label file (default: the one shipped in the package)."""
        path = Path(path) if path is not None else DEFAULT_LABELS_FILE
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LabelFileError(f"{path}: {exc}") from None
        if data.get("format") != FORMAT:
            raise LabelFileError(f"{path}: format must be {FORMAT}")
        labels = []
        for n, entry in enumerate(data.get("consideration", []), 1):
            missing = [
                k for k in ("kind", "system", "code", "display", "members", "rationale") if k not in entry
            ]
            if missing:
                raise LabelFileError(f"{path}: consideration {n} lacks {', '.join(missing)}")
            if entry["kind"] not in KINDS:
                raise LabelFileError(f"{path}: consideration {n}: kind must be one of {KINDS}")
            sexes = tuple(entry.get("sexes", SEXES))
            if not sexes or any(s not in SEXES for s in sexes):
                raise LabelFileError(f"{path}: consideration {n}: sexes must be among {SEXES}")
            label = Label(
                kind=entry["kind"],
                system=entry["system"],
                code=str(entry["code"]),
                display=entry["display"],
                codes=tuple(str(c) for c in entry["members"]),
                ingredients=tuple(entry.get("ingredients", ())),
                rationale=entry["rationale"],
                sexes=sexes,
                min_age=float(entry.get("min_age", 0)),
                max_age=float(entry.get("max_age", 120)),
                not_with=tuple(str(i) for i in entry.get("not_with", ())),
                not_with_reason=str(entry.get("not_with_reason", "")),
            )
            if label.not_with and not label.not_with_reason.strip():
                raise LabelFileError(
                    f"{path}: consideration {label.display!r}: not_with needs a not_with_reason"
                )
            if not label.codes:
                raise LabelFileError(f"{path}: consideration {label.display!r} has no member codes")
            if label.min_age > label.max_age:
                raise LabelFileError(f"{path}: consideration {label.display!r}: min_age above max_age")
            labels.append(label)
        excluded = []
        for n, entry in enumerate(data.get("excluded", []), 1):
            if not str(entry.get("reason", "")).strip():
                raise LabelFileError(f"{path}: excluded entry {n} ({entry.get('display')!r}) has no reason")
            excluded.append(
                Exclusion(
                    kind=entry["kind"],
                    system=entry.get("system", SNOMED if entry["kind"] == DIAGNOSIS else RXNORM),
                    codes=tuple(str(c) for c in entry["codes"]),
                    display=entry.get("display", ""),
                    reason=entry["reason"],
                )
            )
        ids = {label.id for label in labels}
        for label in labels:
            unknown = [i for i in label.not_with if i not in ids or i == label.id]
            if unknown:
                raise LabelFileError(
                    f"{path}: consideration {label.display!r}: not_with: no such other {unknown}"
                )
        space = cls(labels=labels, excluded=excluded)
        both = {key for key in space._member if key in space._excluded}
        if both:
            raise LabelFileError(f"{path}: codes both considered and excluded: {sorted(c for _, c in both)}")
        return space

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": [{**label.to_json(), "positives": self.positives.get(label.id, 0)} for label in self],
            "excluded": [
                {
                    "kind": e.kind,
                    "system": e.system,
                    "codes": list(e.codes),
                    "display": e.display,
                    "reason": e.reason,
                }
                for e in self.excluded
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelSpace:
        labels = [Label.from_json(d) for d in data["labels"]]
        excluded = [
            Exclusion(e["kind"], e["system"], tuple(e["codes"]), e.get("display", ""), e["reason"])
            for e in data.get("excluded", [])
        ]
        positives = {
            label.id: int(d.get("positives", 0)) for label, d in zip(labels, data["labels"], strict=True)
        }
        return cls(labels=labels, excluded=excluded, positives=positives)


def training_counts(
    labels: LabelSpace, data_dir: str | Path, per_patient: int = 4, seed: int = 13, progress: bool = False
) -> dict[int, tuple[int, int]]:
    """Per consideration: patients with any member code, and positive training examples (situations
    where it is documented or new within the year, as training builds them with the default settings)."""
    from cds_plugin.model.dataset import build_situations, load_corpus
    from cds_plugin.model.task import concept_references

    records = load_corpus(data_dir, progress=progress)
    patients: dict[int, int] = {}
    for record in records:
        for i in set(concept_references(record, labels).values()):
            patients[i] = patients.get(i, 0) + 1
    positives: dict[int, int] = {}
    for situation in build_situations(records, per_patient, seed, labels):
        for i in situation.documented | situation.new:
            positives[i] = positives.get(i, 0) + 1
    return {i: (patients.get(i, 0), positives.get(i, 0)) for i in range(len(labels))}
