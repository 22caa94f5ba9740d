"""The patient's data in clinical words, for people (cards, explanation pages); the model's own text is
values.py and linearize.py.

- **Values** are rounded to the precision clinicians write per quantity: a table by LOINC code
  (`DECIMALS_BY_LOINC`: BMI 27.2, HbA1c 6.9 %, blood pressure 128/84, glucose and cholesterol integers,
  weight 81.4 kg, temperature 37.2 °C, creatinine 0.92, potassium 4.1...), else by unit
  (`DECIMALS_BY_UNIT`: mmHg and /min integers, kg, cm, % one decimal...), else three significant digits
  with at most two decimals (integers from 100 up).
- **Units** as clinicians write them (`clinical_unit`): UCUM `mm[Hg]` -> mmHg, `kg/m2` -> kg/m², `Cel` ->
  °C, `[lb_av]` -> lb, `10*3/uL` -> ×10³/µL, `/a` -> /year; annotations (`{score}`, `{beats}/min`) are
  never shown.
- **Dates** as dates (`2020-03-02`), **resource kinds** in words (`kind_of`: lab, vital sign, problem,
  medication...), and never a system URL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cds_plugin.fhir.record import Observation

LOINC = "http://loinc.org"

#: LOINC code -> decimals shown.
DECIMALS_BY_LOINC: dict[str, int] = {
    # vital signs
    "39156-5": 1,  # body mass index
    "8480-6": 0,  # systolic blood pressure
    "8462-4": 0,  # diastolic blood pressure
    "8478-0": 0,  # mean blood pressure
    "79893-4": 0,  # intraocular pressure, left eye
    "79892-6": 0,  # intraocular pressure, right eye
    "8867-4": 0,  # heart rate
    "9279-1": 0,  # respiratory rate
    "59408-5": 0,  # oxygen saturation (pulse oximetry)
    "2708-6": 0,  # oxygen saturation, arterial
    "8310-5": 1,  # body temperature
    "8331-1": 1,  # oral temperature
    "29463-7": 1,  # body weight
    "3141-9": 1,  # body weight, measured
    "8302-2": 1,  # body height
    "8306-3": 1,  # body height, lying
    "9843-4": 1,  # head circumference
    "59576-9": 0,  # BMI percentile
    "77606-2": 0,  # weight-for-length percentile
    "8289-1": 0,  # head circumference percentile
    # glycemia
    "4548-4": 1,  # hemoglobin A1c
    "17856-6": 1,  # hemoglobin A1c (HPLC)
    "2339-0": 0,  # glucose, blood
    "2345-7": 0,  # glucose, serum/plasma
    "1558-6": 0,  # fasting glucose
    # lipids
    "2093-3": 0,  # total cholesterol
    "2571-8": 0,  # triglycerides
    "18262-6": 0,  # LDL cholesterol (direct)
    "13457-7": 0,  # LDL cholesterol (calculated)
    "2085-9": 0,  # HDL cholesterol
    # kidney and electrolytes
    "33914-3": 0,  # eGFR (MDRD)
    "62238-1": 0,  # eGFR (CKD-EPI)
    "48643-1": 0,  # eGFR, black
    "48642-3": 0,  # eGFR, non-black
    "38483-4": 2,  # creatinine, blood
    "2160-0": 2,  # creatinine, serum/plasma
    "6299-2": 0,  # urea nitrogen, blood
    "3094-0": 0,  # urea nitrogen, serum/plasma
    "2947-0": 0,  # sodium, blood
    "2951-2": 0,  # sodium, serum/plasma
    "6298-4": 1,  # potassium, blood
    "2823-3": 1,  # potassium, serum/plasma
    "2069-3": 0,  # chloride, blood
    "2075-0": 0,  # chloride, serum/plasma
    "20565-8": 0,  # carbon dioxide, blood
    "2028-9": 0,  # carbon dioxide, serum/plasma
    "49765-1": 1,  # calcium, blood
    "17861-6": 1,  # calcium, serum/plasma
    "14959-1": 1,  # microalbumin/creatinine ratio
    # blood count
    "718-7": 1,  # hemoglobin
    "4544-3": 1,  # hematocrit
    "6690-2": 1,  # leukocytes
    "789-8": 2,  # erythrocytes
    "777-3": 0,  # platelets
    "787-2": 1,  # MCV
    "785-6": 1,  # MCH
    "786-4": 1,  # MCHC
    "21000-5": 1,  # RDW
    "32207-3": 1,  # platelet distribution width
    "32623-1": 1,  # mean platelet volume
    # other
    "10230-1": 0,  # left ventricular ejection fraction
    "19926-5": 0,  # FEV1/FVC
    "33762-6": 0,  # NT-proBNP
    "30934-4": 0,  # BNP
    "6301-6": 1,  # INR
    "1742-6": 0,  # ALT
    "1920-8": 0,  # AST
    "6768-6": 0,  # alkaline phosphatase
    "1975-2": 1,  # bilirubin, total
    "1751-7": 1,  # albumin
    "2885-2": 1,  # protein, total
    "72514-3": 0,  # pain severity 0-10
    "413077008": 2,  # LogMAR visual acuity, left eye (SNOMED CT observable in Synthea)
    "413078003": 2,  # LogMAR visual acuity, right eye
}

#: Unit (UCUM code, or the unit text) -> decimals shown, when the code is not in the table above.
DECIMALS_BY_UNIT: dict[str, int] = {
    "mm[Hg]": 0,
    "mmHg": 0,
    "/min": 0,
    "{beats}/min": 0,
    "{breaths}/min": 0,
    "{score}": 0,
    "(score)": 0,
    "{#}": 0,
    "/a": 0,
    "a": 0,
    "mo": 0,
    "wk": 0,
    "d": 0,
    "mg/dL": 0,
    "mL/min/{1.73_m2}": 0,
    "U/L": 0,
    "pg/mL": 0,
    "%": 1,
    "kg/m2": 1,
    "kg": 1,
    "g": 0,
    "[lb_av]": 1,
    "cm": 1,
    "[in_i]": 1,
    "Cel": 1,
    "[degF]": 1,
    "mmol/L": 1,
    "g/dL": 1,
    "10*3/uL": 1,
    "10*6/uL": 2,
    "fL": 1,
    "pg": 1,
    "mg/g": 1,
    "ng/mL": 1,
}

#: UCUM codes (and common unit texts) as clinicians write them; "" shows no unit.
UNIT_WORDS: dict[str, str] = {
    "mm[Hg]": "mmHg",
    "kg/m2": "kg/m²",
    "Cel": "°C",
    "[degF]": "°F",
    "[lb_av]": "lb",
    "[oz_av]": "oz",
    "[in_i]": "in",
    "[ft_i]": "ft",
    "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "mL/min/1.73m2": "mL/min/1.73 m²",
    "/a": "/year",
    "a": "years",
    "mo": "months",
    "wk": "weeks",
    "d": "days",
    "h": "h",
    "1": "",
    "[pH]": "",
    "(score)": "",
    "meq/L": "mEq/L",
    "m[IU]/L": "mIU/L",
    "[iU]/L": "IU/L",
    "[IU]/L": "IU/L",
    "u[IU]/mL": "µIU/mL",
}
_ANNOTATION = re.compile(r"\{[^}]*\}")
_BRACKET = re.compile(r"\[([^\]]*)\]")
_POWER_OF_TEN = re.compile(r"10\*(-?\d+)")
_MICRO = re.compile(r"(^|/)u(?=[a-zA-Z])")
_SQUARE = re.compile(r"(?<=[A-Za-z])([23])(?![0-9])")
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")

#: Observation categories -> the kind of fact in words.
_OBSERVATION_KINDS = {
    "laboratory": "lab",
    "vital-signs": "vital sign",
    "vital-sign": "vital sign",
    "survey": "survey",
    "social-history": "social history",
    "exam": "exam",
    "imaging": "imaging",
    "procedure": "procedure result",
    "therapy": "therapy",
    "activity": "activity",
}
_KINDS = {
    "Patient": "demographics",
    "Condition": "problem",
    "MedicationRequest": "medication",
    "AllergyIntolerance": "allergy",
    "Procedure": "procedure",
    "Immunization": "immunization",
    "Encounter": "encounter",
    "CarePlan": "care plan",
    "Observation": "observation",
}
_SYSTOLIC, _DIASTOLIC = "8480-6", "8462-4"


def decimals_for(codes: Iterable[str], unit: str | None, value: float | None = None) -> int | None:
    """Decimals clinicians write for this quantity (by LOINC code, then unit); None: not in the tables.

    A unit alone says less than a code (ng/mL covers 0.03 and 300): below 1 it gives way to the
    significant digits of the default rule."""
    for code in codes:
        if code in DECIMALS_BY_LOINC:
            return DECIMALS_BY_LOINC[code]
    if unit is not None and unit.strip() in DECIMALS_BY_UNIT:
        if value is not None and 0 < abs(value) < 1:
            return None
        return DECIMALS_BY_UNIT[unit.strip()]
    return None


def default_decimals(value: float) -> int:
    """Three significant digits, at most two decimals from 1 up, none from 100 up."""
    if value == 0 or not math.isfinite(value):
        return 0
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 2:
        return 0
    return max(0, 2 - magnitude) if magnitude < 0 else min(2, 2 - magnitude)


def clinical_number(value: float, decimals: int | None = None) -> str:
    """`value` with `decimals` (fixed: 6.0 % stays 6.0), or the default rule (trailing zeros dropped)."""
    if not math.isfinite(value):
        return "?"
    fixed = decimals is not None
    places = decimals if fixed else default_decimals(value)
    text = f"{round(value, places):.{places}f}"
    if not fixed and "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")  # no "-0"
    return text


def clinical_unit(unit: str | None) -> str:
    """A unit as clinicians write it (see the module docstring)."""
    if not unit:
        return ""
    text = unit.strip()
    if text in UNIT_WORDS:
        return UNIT_WORDS[text]
    text = _ANNOTATION.sub("", text)
    if text in UNIT_WORDS:
        return UNIT_WORDS[text]
    text = _POWER_OF_TEN.sub(lambda m: "×10" + m.group(1).translate(_SUPERSCRIPT), text)
    text = _BRACKET.sub(lambda m: m.group(1).split("_")[0], text)
    text = _MICRO.sub(lambda m: m.group(1) + "µ", text)
    text = _SQUARE.sub(lambda m: m.group(1).translate(_SUPERSCRIPT), text)
    text = text.strip()
    return "" if text in ("1", "/") else text


def observation_codes(fact: Observation) -> tuple[str, ...]:
    """The observation's codes that the precision table is keyed by (LOINC first)."""
    if fact.code is None:
        return ()
    loinc = fact.code.codes(LOINC)
    return loinc + tuple(c for c in fact.code.codes() if c not in loinc)


def quantity_text(
    value: float, unit: str | None, codes: Sequence[str] = (), comparator: str | None = None
) -> str:
    """`27.2 kg/m²`, `<5 mg/dL`, `6.9 %`."""
    number = clinical_number(value, decimals_for(codes, unit, value))
    shown = clinical_unit(unit)
    text = f"{comparator or ''}{number}"
    return f"{text} {shown}" if shown else text


def observation_value(fact: Observation) -> str:
    """One observation's value in clinical words ("" when it has none)."""
    if fact.value is not None:
        return quantity_text(fact.value, fact.unit, observation_codes(fact), fact.comparator)
    if fact.value_concept is not None:
        return _clean(fact.value_concept.display)
    if fact.value_text is not None:
        return _clean(fact.value_text)
    if fact.absent_reason is not None:
        return "not available"
    return ""


def panel_value(facts: Sequence[Observation]) -> str:
    """The value of a panel from its components: blood pressure as `128/84 mmHg`, others listed."""
    by_code = {code: f for f in facts for code in observation_codes(f)}
    systolic, diastolic = by_code.get(_SYSTOLIC), by_code.get(_DIASTOLIC)
    if systolic is not None and diastolic is not None and systolic.value is not None and diastolic.value:
        unit = clinical_unit(systolic.unit) or "mmHg"
        return f"{clinical_number(systolic.value, 0)}/{clinical_number(diastolic.value, 0)} {unit}"
    parts = []
    for fact in facts[:3]:
        value = observation_value(fact)
        name = _clean(fact.code.display if fact.code is not None else None)
        if value:
            parts.append(f"{name} {value}".strip())
    return "; ".join(parts) + (" …" if len(facts) > 3 else "")


def kind_of(resource_type: str, fact: Any | None = None) -> str:
    """The kind of fact in words: lab, vital sign, problem, medication, procedure, immunization..."""
    if resource_type == "Observation" and fact is not None:
        for category in getattr(fact, "categories", ()):
            if category in _OBSERVATION_KINDS:
                return _OBSERVATION_KINDS[category]
    return _KINDS.get(resource_type, resource_type.lower())


def clinical_date(when: datetime | None) -> str:
    """A date as a date: `2020-03-02` (UTC; no time of day)."""
    return when.date().isoformat() if when is not None else ""


def _clean(text: str | None) -> str:
    return " ".join(text.split()) if text else ""
