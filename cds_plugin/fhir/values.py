"""How numbers, times and ages are written for the model.

Numbers: three significant digits (`129.74` -> `130`, `6.1` -> `6.1`, `0.01234` -> `0.0123`) plus a
range flag (`low`, `normal`, `high`). Three digits keep the value's order of magnitude and enough
precision for clinical thresholds (HbA1c 6.4 vs 6.5) without spending tokens on noise; the flag lets the
model learn "out of range" once for all codes. The flag comes from, in order: the Observation's own
interpretation code, its referenceRange, and for adults a small table of common adult ranges below
(used only when the unit matches). Times are relative to the record's reference time in coarse bins.
"""

from __future__ import annotations

import math
from datetime import datetime

#: LOINC -> (low, high, units accepted). Coarse adult ranges from common clinical guidance (ACC/AHA 2017
#: blood pressure, ADA 2024 glycemia, NCEP ATP III lipids, KDIGO eGFR, WHO BMI), used only as a fallback
#: when the Observation has no interpretation and no referenceRange. None: no bound on that side.
ADULT_RANGES: dict[str, tuple[float | None, float | None, frozenset[str | None]]] = {
    "8480-6": (90, 129, frozenset({"mm[Hg]", "mmHg", None})),  # systolic blood pressure
    "8462-4": (60, 79, frozenset({"mm[Hg]", "mmHg", None})),  # diastolic blood pressure
    "4548-4": (4.0, 5.6, frozenset({"%", None})),  # hemoglobin A1c
    "2339-0": (70, 99, frozenset({"mg/dL"})),  # glucose, blood
    "2345-7": (70, 99, frozenset({"mg/dL"})),  # glucose, serum/plasma
    "39156-5": (18.5, 24.9, frozenset({"kg/m2", None})),  # body mass index
    "2093-3": (None, 199, frozenset({"mg/dL"})),  # total cholesterol
    "2571-8": (None, 149, frozenset({"mg/dL"})),  # triglycerides
    "18262-6": (None, 99, frozenset({"mg/dL"})),  # LDL cholesterol (direct)
    "13457-7": (None, 99, frozenset({"mg/dL"})),  # LDL cholesterol (calculated)
    "2085-9": (40, None, frozenset({"mg/dL"})),  # HDL cholesterol
    "33914-3": (60, None, frozenset({"mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min"})),  # eGFR
    "38483-4": (0.6, 1.3, frozenset({"mg/dL"})),  # creatinine, blood
    "2160-0": (0.6, 1.3, frozenset({"mg/dL"})),  # creatinine, serum/plasma
    "6299-2": (7, 20, frozenset({"mg/dL"})),  # urea nitrogen
    "2947-0": (135, 145, frozenset({"mmol/L"})),  # sodium, blood
    "2951-2": (135, 145, frozenset({"mmol/L"})),  # sodium, serum/plasma
    "6298-4": (3.5, 5.0, frozenset({"mmol/L"})),  # potassium, blood
    "2823-3": (3.5, 5.0, frozenset({"mmol/L"})),  # potassium, serum/plasma
    "718-7": (12.0, 17.5, frozenset({"g/dL"})),  # hemoglobin
    "8867-4": (60, 100, frozenset({"/min", "{beats}/min", None})),  # heart rate
    "9279-1": (12, 20, frozenset({"/min", "{breaths}/min", None})),  # respiratory rate
    "14959-1": (None, 29, frozenset({"mg/g"})),  # microalbumin/creatinine ratio
    "10230-1": (50, None, frozenset({"%"})),  # left ventricular ejection fraction
    "59408-5": (95, None, frozenset({"%"})),  # oxygen saturation (pulse oximetry)
    "2708-6": (95, None, frozenset({"%"})),  # oxygen saturation, arterial
}

#: Observation.interpretation codes (v3 ObservationInterpretation) -> flag word.
INTERPRETATION_WORDS = {
    "N": "normal",
    "L": "low",
    "LL": "critically low",
    "LU": "low",
    "H": "high",
    "HH": "critically high",
    "HU": "high",
    "A": "abnormal",
    "AA": "critically abnormal",
    "POS": "positive",
    "NEG": "negative",
    "DET": "detected",
    "ND": "not detected",
    "R": "resistant",
    "S": "susceptible",
    "I": "intermediate",
}


def format_number(value: float) -> str:
    """Three significant digits, never scientific notation, no trailing zeros."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else "?"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = 2 - magnitude
    rounded = round(value, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:  # 99.96 -> 100
        decimals -= 1
        rounded = round(value, decimals)
    if decimals <= 0:
        return str(int(rounded))
    text = f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def range_flag(value: float, low: float | None, high: float | None) -> str | None:
    if low is not None and value < low:
        return "low"
    if high is not None and value > high:
        return "high"
    if low is None and high is None:
        return None
    return "normal"


def relative_time(when: datetime, now: datetime) -> str:
    """`today`, `3d ago`, `5w ago`, `7mo ago`, `4y ago` (or `in 3d` for the future)."""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    days = abs(seconds) / 86400
    if days < 1:
        return "today"
    if days < 14:
        text = f"{int(days)}d"
    elif days < 7 * 9:
        text = f"{int(days // 7)}w"
    elif days < 730:
        text = f"{int(days // 30.44)}mo"
    else:
        text = f"{int(days // 365.25)}y"
    return f"in {text}" if future else f"{text} ago"


def age_band(years: float | None) -> str:
    """Age bands: under 1, 1-4, then 5-year bands to 85-89, then 90+ (no finer: it identifies)."""
    if years is None:
        return "unknown"
    if years < 1:
        return "under 1"
    if years < 5:
        return "1-4"
    if years >= 90:
        return "90+"
    low = int(years // 5) * 5
    return f"{low}-{low + 4}"
