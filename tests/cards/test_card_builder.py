"""The card's one-sentence rationale, as a clinician reads it."""

from __future__ import annotations

from cds_plugin.cards.card_builder import DEMOGRAPHICS, EvidenceRow, rationale
from cds_plugin.model.assessment import Consideration


def _consideration() -> Consideration:
    return Consideration(
        code="44054006",
        system="http://snomed.info/sct",
        display="Type 2 diabetes mellitus",
        kind="diagnosis",
        probability=0.7,
        threshold=0.3,
        documented=False,
        label_index=0,
    )


def test_rationale_names_the_top_evidence_and_what_pointed_the_other_way():
    rows = [
        EvidenceRow("Observation/1", "Hemoglobin A1c", "6.9 %", "2020-03-02", 0.21, "lab"),
        EvidenceRow("Condition/2", "Obesity", "", "2019-01-01", 0.08, "problem"),
        EvidenceRow("Patient/3", DEMOGRAPHICS, "age 25-29, female", "", -0.05, "demographics"),
    ]
    assert rationale(_consideration(), rows, additive=True) == (
        "Suggested mainly because of Hemoglobin A1c 6.9 % on 2020-03-02 and Obesity on 2019-01-01; "
        "age 25-29, female pointed the other way."
    )


def test_age_and_sex_read_as_the_patient_s_age_band_and_sex():
    rows = [EvidenceRow("Patient/3", DEMOGRAPHICS, "age 75-79, male", "", 0.3, "demographics")]
    assert rationale(_consideration(), rows, additive=True) == "Suggested mainly because of age 75-79, male."
