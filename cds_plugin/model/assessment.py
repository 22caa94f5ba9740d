"""What the Engine answers: every label of the model, ranked, with calibrated probability and threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds_plugin.fhir.linearize import Linearization
    from cds_plugin.fhir.record import PatientRecord
    from cds_plugin.model.tokenizer import EncodedInput


@dataclass(frozen=True)
class Consideration:
    """One diagnosis or treatment the model rates for this patient."""

    code: str
    system: str
    display: str
    kind: str  # "diagnosis" | "treatment"
    probability: float  # calibrated
    threshold: float
    documented: bool  # already in the record (active diagnosis, or requested within the past year)
    label_index: int

    @property
    def above_threshold(self) -> bool:
        return self.probability >= self.threshold

    @property
    def suggested(self) -> bool:
        """Likely and not yet in the record: what a card may propose."""
        return self.above_threshold and not self.documented

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "system": self.system,
            "display": self.display,
            "kind": self.kind,
            "probability": round(self.probability, 4),
            "threshold": round(self.threshold, 4),
            "documented": self.documented,
        }


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
    encoded: EncodedInput | None = field(default=None, repr=False)

    @property
    def considerations(self) -> list[Consideration]:
        return sorted(self.diagnoses + self.treatments, key=lambda c: -c.probability)

    def find(self, code: str) -> Consideration | None:
        for c in self.diagnoses + self.treatments:
            if c.code == code or f"{c.kind}:{c.code}" == code:
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "reference_time": self.reference_time.isoformat(),
            "diagnoses": [c.to_json() for c in self.diagnoses],
            "treatments": [c.to_json() for c in self.treatments],
        }
