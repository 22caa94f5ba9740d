"""One model position per FHIR fact: the fact's code, value bin, time before T and kind as integer ids.

The vocabulary is fitted on the training facts and saved with the model (facts.json):

- code: the fact's coding (`system|code`; a coded value joins it, `loinc|72166-2=sct|8517006`, so
  "former smoker" and "never smoker" are different facts), seen in at least `min_count` training
  patients; rarer and unseen codes are [UNK] (and get their display embedding, see display_vectors.py);
  the patient's age and sex are positions of their own ([AGE] with the age as its value, [SEX]=female).
- value: per-code quantile bins of the numeric value (deciles by default) fitted on training values,
  after converting the unit to the code's most frequent training unit where a conversion is known
  (lb -> kg, in -> cm, degF -> Cel); 0 means no usable value.
- time: days between the fact and T in log-spaced buckets (a week, a month, 3 and 6 months, 1, 2, 3, 5,
  10, 20 years, older; undated facts have their own bucket).
- kind: resource type and status (`Condition|resolved`, `MedicationRequest|stopped`, ...); a coded
  reason of an encounter is `Encounter.reasonCode|finished`.
- concept: the consideration a Condition or MedicationRequest states, or a coded reason names
  (labels.toml groups the member codes of both Synthea generations and every strength of an
  ingredient), so what the label file says means the same is one input, as it is one feature for the
  logistic-regression baseline.

`EncodedFacts.segments` maps each position to its linearization segment, so position attributions are
fact attributions without any further mapping.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from cds_plugin.fhir.linearize import Linearization, Segment, is_reason, part_key

PAD, UNK, MASK = 0, 1, 2
SPECIAL_CODES = ("[PAD]", "[UNK]", "[MASK]")
AGE_CODE = "[AGE]"
SEX_PREFIX = "[SEX]="
#: Upper edges (days before T) of the time buckets; ids: 0 padding, 1 undated, 2.. these, then older.
TIME_EDGES_DAYS = (7, 30, 91, 182, 365, 730, 1095, 1826, 3652, 7305)
N_TIMES = len(TIME_EDGES_DAYS) + 3
UNDATED = 1
#: Resource types whose facts can state a consideration (their `concepts` entry).
CONCEPT_TYPES = ("Condition", "MedicationRequest")

#: Unit conversions to a code's reference unit: (from, to) -> function.
_CONVERSIONS = {
    ("[lb_av]", "kg"): lambda v: v * 0.45359237,
    ("kg", "[lb_av]"): lambda v: v / 0.45359237,
    ("g", "kg"): lambda v: v / 1000.0,
    ("kg", "g"): lambda v: v * 1000.0,
    ("[in_i]", "cm"): lambda v: v * 2.54,
    ("cm", "[in_i]"): lambda v: v / 2.54,
    ("m", "cm"): lambda v: v * 100.0,
    ("[degF]", "Cel"): lambda v: (v - 32.0) / 1.8,
    ("Cel", "[degF]"): lambda v: v * 1.8 + 32.0,
    ("mmHg", "mm[Hg]"): lambda v: v,
    ("mm[Hg]", "mmHg"): lambda v: v,
}


def fact_key(segment: Segment) -> str:
    """The vocabulary key of a segment (see the module docstring)."""
    if segment.resource_type == "Patient":
        if segment.path == "Patient.birthDate":
            return AGE_CODE
        if segment.path == "Patient.gender":
            return SEX_PREFIX + (segment.value_code or "unknown")
        return "[DECEASED]"
    key = segment.code or f"{segment.resource_type}|text:{segment.display.lower()}"
    return f"{key}={segment.value_code}" if segment.value_code else key


def kind_key(segment: Segment) -> str:
    kind = f"{segment.resource_type}.reasonCode" if is_reason(segment) else segment.resource_type
    return f"{kind}|{segment.status or ''}"


def time_bucket(when: datetime | None, reference_time: datetime) -> int:
    if when is None:
        return UNDATED
    days = max((reference_time - when).total_seconds() / 86400.0, 0.0)
    return 2 + bisect.bisect_left(TIME_EDGES_DAYS, days)


@dataclass(frozen=True)
class EncodedFacts:
    """The model input of one record: parallel arrays, one entry per position."""

    codes: np.ndarray  # int64 vocabulary ids
    values: np.ndarray  # int64 value bins (0: none)
    times: np.ndarray  # int64 time buckets
    kinds: np.ndarray  # int64 kind ids
    concepts: np.ndarray  # int64 consideration a Condition or MedicationRequest states: label index + 1, or 0
    segments: np.ndarray  # int64 linearization segment of each position
    unknown: tuple[tuple[int, str], ...] = ()  # (position, display) of [UNK] codes
    dropped: int = 0  # facts beyond the cap (counted in the linearization)

    def __len__(self) -> int:
        return len(self.codes)

    def select(self, keep: np.ndarray) -> EncodedFacts:
        """The input with only the positions where `keep` is true (removing facts)."""
        index = np.flatnonzero(keep)
        where = {p: n for n, p in enumerate(index.tolist())}
        return EncodedFacts(
            self.codes[index],
            self.values[index],
            self.times[index],
            self.kinds[index],
            self.concepts[index],
            self.segments[index],
            tuple((where[p], d) for p, d in self.unknown if p in where),
            self.dropped,
        )


class FactVocabulary:
    """Code, kind and value-bin tables fitted on training facts; encodes linearizations."""

    def __init__(
        self,
        codes: Sequence[str],
        kinds: Sequence[str],
        bins: dict[str, list[float]],
        units: dict[str, str],
        displays: dict[str, str],
        n_bins: int,
    ) -> None:
        self.codes = list(codes)
        self.kinds = list(kinds)
        self.bins = bins
        self.units = units
        self.displays = displays
        self.n_bins = n_bins
        self.code_index = {c: i for i, c in enumerate(self.codes)}
        self.kind_index = {k: i for i, k in enumerate(self.kinds)}

    @property
    def n_codes(self) -> int:
        return len(self.codes)

    @property
    def n_kinds(self) -> int:
        return len(self.kinds)

    @property
    def n_values(self) -> int:
        return self.n_bins + 1

    @classmethod
    def fit(
        cls, linearizations: Iterable[tuple[str, Linearization]], min_count: int = 2, n_bins: int = 10
    ) -> FactVocabulary:
        """Fit on (patient reference, linearization) pairs: a code counts once per patient."""
        patients: dict[str, set[str]] = defaultdict(set)
        kinds: Counter[str] = Counter()
        displays: dict[str, Counter[str]] = defaultdict(Counter)
        unit_counts: dict[str, Counter[str]] = defaultdict(Counter)
        raw_values: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
        for patient, lin in linearizations:
            for segment in lin.segments:
                key = fact_key(segment)
                patients[key].add(patient)
                kinds[kind_key(segment)] += 1
                displays[key][segment.display] += 1
                if segment.value is not None:
                    raw_values[key].append((segment.value, segment.unit))
                    unit_counts[key][segment.unit or ""] += 1
        codes = list(SPECIAL_CODES) + sorted(k for k, p in patients.items() if len(p) >= min_count)
        units = {k: c.most_common(1)[0][0] for k, c in unit_counts.items()}
        bins: dict[str, list[float]] = {}
        for key, pairs in raw_values.items():
            if key not in codes:
                continue
            values = [
                v for v in (_convert(value, unit, units[key]) for value, unit in pairs) if v is not None
            ]
            if len(values) >= 2:
                edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
                bins[key] = [float(e) for e in edges]
        return cls(
            codes=codes,
            kinds=["[PAD]", "[UNK]", *sorted(kinds)],
            bins=bins,
            units=units,
            displays={k: displays[k].most_common(1)[0][0] for k in codes if k in displays},
            n_bins=n_bins,
        )

    def value_bin(self, key: str, value: float | None, unit: str | None) -> int:
        edges = self.bins.get(key)
        if value is None or edges is None:
            return 0
        converted = _convert(value, unit, self.units.get(key, unit or ""))
        if converted is None:
            return 0
        return 1 + bisect.bisect_right(edges, converted)

    def encode(self, lin: Linearization, concepts: Mapping[str, int] | None = None) -> EncodedFacts:
        """Encode a linearization; `concepts` maps the reference of each Condition and MedicationRequest
        that states a consideration to its label index (model.task.concept_references)."""
        n = len(lin.segments)
        concepts = concepts or {}
        concept_ids = np.zeros(n, dtype=np.int64)
        codes = np.empty(n, dtype=np.int64)
        values = np.empty(n, dtype=np.int64)
        times = np.empty(n, dtype=np.int64)
        kinds = np.empty(n, dtype=np.int64)
        unknown = []
        now = lin.reference_time
        for i, segment in enumerate(lin.segments):
            key = fact_key(segment)
            code = self.code_index.get(key, UNK)
            if code == UNK:
                unknown.append((i, segment.display))
            codes[i] = code
            values[i] = self.value_bin(key, segment.value, segment.unit)
            times[i] = time_bucket(segment.date, now)
            kinds[i] = self.kind_index.get(kind_key(segment), UNK)
            if segment.resource_type in CONCEPT_TYPES:
                concept_ids[i] = concepts.get(segment.reference, -1) + 1
            elif is_reason(segment):
                concept_ids[i] = concepts.get(part_key(segment.reference, segment.path), -1) + 1
        return EncodedFacts(
            codes,
            values,
            times,
            kinds,
            concept_ids,
            np.arange(n, dtype=np.int64),
            tuple(unknown),
            sum(lin.omitted.values()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "codes": self.codes,
            "kinds": self.kinds,
            "bins": self.bins,
            "units": self.units,
            "displays": self.displays,
            "n_bins": self.n_bins,
            "time_edges_days": list(TIME_EDGES_DAYS),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FactVocabulary:
        if tuple(data.get("time_edges_days", TIME_EDGES_DAYS)) != TIME_EDGES_DAYS:
            raise ValueError("facts.json was written with other time buckets")
        return cls(
            data["codes"], data["kinds"], data["bins"], data["units"], data["displays"], data["n_bins"]
        )


def _convert(value: float, unit: str | None, target: str) -> float | None:
    unit = unit or ""
    if unit == target:
        return value
    convert = _CONVERSIONS.get((unit, target))
    return convert(value) if convert is not None else None
