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


def test_the_card_says_what_the_contributions_add_up_to_and_when_they_cancel():
    from types import SimpleNamespace

    from cds_plugin.cards.card_builder import change_sentence

    ig = SimpleNamespace(
        method="integrated_gradients", settings={"baseline": "mask"}, f_x=0.72, f_baseline=0.08
    )
    small = [EvidenceRow("Encounter/1", "Encounter for symptom", "", "2014-12-24", 0.40, "encounter")]
    assert change_sentence(ig, small) == (
        "The contributions add up to the change from an empty record's 0.08 to this record's 0.72."
    )
    cancelling = [EvidenceRow("Encounter/1", "Encounter for symptom", "", "2014-12-24", 2.11, "encounter")]
    assert change_sentence(ig, cancelling).endswith(
        "; they partly cancel, so one alone can exceed that change."
    )
    shap = SimpleNamespace(method="shap", settings={}, f_x=0.72, f_baseline=0.30)
    assert "the baseline's 0.30" in change_sentence(shap, small)
    assert change_sentence(SimpleNamespace(method="x", settings={}, f_x=None, f_baseline=None), small) is None
