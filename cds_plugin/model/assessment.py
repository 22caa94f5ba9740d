"""What the Engine answers: every label of the model, ranked, with calibrated probability and threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cds_plugin.fhir.linearize import Linearization
    from cds_plugin.fhir.record import PatientRecord
    from cds_plugin.model.facts import EncodedFacts


@dataclass(frozen=True)
class Consideration:
    """One diagnosis or treatment the model rates for this patient."""

    code: str  # preferred code (SNOMED CT concept, RxNorm ingredient)
    system: str
    display: str
    kind: str  # "diagnosis" | "treatment"
    probability: float  # calibrated
    threshold: float
    documented: bool  # already in the record (active diagnosis, or requested within the past year)
    label_index: int
    codes: tuple[str, ...] = ()  # every member code that means this consideration
    plausible: bool = True  # the patient's sex and age are within the consideration's range
    #: the documented consideration that rules this one out for the patient (label file `not_with`)
    ruled_out_by: str | None = None
    #: the probability of an empty record (every fact an empty [MASK] fact; integrated gradients'
    #: baseline): what the model says without anything of this patient
    baseline_probability: float | None = None

    @property
    def above_threshold(self) -> bool:
        return self.probability >= self.threshold

    @property
    def odds_ratio(self) -> float:
        """How many times the patient's record multiplies the odds of an empty record: 1 means the
        record adds nothing; a card is only as patient-specific as this is large."""
        if self.baseline_probability is None:
            return float("inf")
        return float(odds_ratio(self.probability, self.baseline_probability))

    @property
    def suggested(self) -> bool:
        """Likely, plausible for this patient, not yet in the record and not ruled out by what is: what a
        card may propose."""
        return self.above_threshold and self.plausible and not self.documented and self.ruled_out_by is None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "system": self.system,
            "display": self.display,
            "kind": self.kind,
            "codes": list(self.codes),
            "probability": round(self.probability, 4),
            "threshold": round(self.threshold, 4),
            "documented": self.documented,
            "plausible": self.plausible,
            "ruled_out_by": self.ruled_out_by,
            "baseline_probability": (
                round(self.baseline_probability, 4) if self.baseline_probability is not None else None
            ),
        }


def odds_ratio(p: Any, p0: Any) -> Any:
    """odds(p) / odds(p0), for numbers or numpy arrays alike, probabilities kept within 1e-9 of 0 and 1."""
    p, p0 = np.clip(p, 1e-9, 1 - 1e-9), np.clip(p0, 1e-9, 1 - 1e-9)
    return (p / (1 - p)) / (p0 / (1 - p0))


@dataclass
class Assessment:
    """The model's view of one patient at one time. `diagnoses` and `treatments` hold every label."""

    diagnoses: list[Consideration]
    treatments: list[Consideration]
    model_version: str
    reference_time: datetime
    # kept for explanations of this same input (not part of the public answer)
    record: PatientRecord | None = field(default=None, repr=False)
    linearization: Linearization | None = field(default=None, repr=False)
    encoded: EncodedFacts | None = field(default=None, repr=False)

    @property
    def considerations(self) -> list[Consideration]:
        return sorted(self.diagnoses + self.treatments, key=lambda c: -c.probability)

    def find(self, code: str) -> Consideration | None:
        """The consideration with this preferred code, `kind:code`, member code or display."""
        for c in self.diagnoses + self.treatments:
            if (
                code in (c.code, f"{c.kind}:{c.code}")
                or code in c.codes
                or code.casefold() == c.display.casefold()
            ):
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "reference_time": self.reference_time.isoformat(),
            "diagnoses": [c.to_json() for c in self.diagnoses],
            "treatments": [c.to_json() for c in self.treatments],
        }
