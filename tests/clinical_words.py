"""What "evidence in clinical words" means, checked independently of cds_plugin.fhir.clinical_text: the
precision clinicians write for common quantities, and what a unit shown to them never looks like."""

from __future__ import annotations

import re

#: Decimals clinicians write, by LOINC code (the issue's examples and the common labs and vitals).
EXPECTED_DECIMALS = {
    "39156-5": 1,  # BMI 27.2
    "4548-4": 1,  # HbA1c 6.9
    "8480-6": 0,  # systolic blood pressure
    "8462-4": 0,  # diastolic blood pressure
    "2339-0": 0,  # glucose
    "2345-7": 0,
    "2093-3": 0,  # cholesterol
    "2571-8": 0,
    "18262-6": 0,
    "2085-9": 0,
    "29463-7": 1,  # weight
    "8302-2": 1,  # height
    "8867-4": 0,  # heart rate
    "9279-1": 0,  # respiratory rate
    "8310-5": 1,  # temperature
    "8331-1": 1,
    "2708-6": 0,  # oxygen saturation
    "33914-3": 0,  # eGFR
    "2947-0": 0,  # sodium
    "6298-4": 1,  # potassium
    "38483-4": 2,  # creatinine
    "72514-3": 0,  # pain score
}
WORDS_FOR_KINDS = {
    "lab",
    "vital sign",
    "survey",
    "social history",
    "exam",
    "imaging",
    "procedure result",
    "observation",
    "problem",
    "medication",
    "procedure",
    "immunization",
    "encounter",
    "allergy",
    "care plan",
    "demographics",
}
ANNOTATION = re.compile(r"\{[^}]*\}")
BRACKETED_UNIT = re.compile(r"\[[A-Za-z_%]+\]")
RAW_UCUM = re.compile(r"mm\[Hg\]|kg/m2\b|\bCel\b|10\*\d|\[lb_av\]|\(score\)")
SYSTEM_URL = re.compile(r"https?://|urn:(?:oid|uuid|cds-plugin):")
NUMBER = re.compile(r"-?\d+(?:\.(\d+))?")


def decimals_in(text: str) -> list[int]:
    """Decimals of each number written in `text`."""
    return [len(m.group(1) or "") for m in NUMBER.finditer(text)]


def value_problems(value: str, loinc: str | None, quantity: float | None) -> list[str]:
    """Why a shown value is not in clinical words ([] when it is)."""
    problems = []
    if ANNOTATION.search(value):
        problems.append("UCUM annotation")
    if BRACKETED_UNIT.search(value) or RAW_UCUM.search(value):
        problems.append("raw UCUM unit")
    if quantity is not None and value:
        first = NUMBER.search(value.replace("×10", " "))
        shown = len(first.group(1) or "") if first else 0
        if loinc in EXPECTED_DECIMALS:
            if shown > EXPECTED_DECIMALS[loinc]:
                problems.append(f"{shown} decimals, {EXPECTED_DECIMALS[loinc]} warranted")
        elif abs(quantity) >= 100 and shown > 1:
            problems.append("more than 1 decimal on a value of 100 or more")
        elif abs(quantity) >= 1 and shown > 2:
            problems.append("more than 2 decimals")
    return problems
