"""The concepts the model reasons about: diagnoses (SNOMED CT codes as in the data) and treatments
(medications grouped at the ingredient level).

Diagnoses: a Condition's SNOMED CT code. Social findings and administrative situations (employment,
education, stress, housing, "Medication review due", ...) stay in the model input but are never labels.

Treatments: no RxNorm table is available offline, so the ingredient is read from the medication's
RxNorm display ("Simvastatin 20 MG Oral Tablet [Zocor]" -> "simvastatin"; combinations become
"clavulanate / amoxicillin" sorted by name), with salts dropped ("metoprolol succinate" -> "metoprolol")
and a short table of brand names and misspellings seen in Synthea. The concept code is then the
ingredient name under the system INGREDIENT_SYSTEM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cds_plugin.fhir.record import Concept, Condition, MedicationRequest

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
INGREDIENT_SYSTEM = "urn:cds-plugin:ingredient"

DIAGNOSIS = "diagnosis"
TREATMENT = "treatment"

#: Words that mark a social finding or administrative situation (matched on the lowercased display).
NON_CLINICAL_WORDS = (
    "employment",
    "employed",
    "labor force",
    "education",
    "educated",
    "school",
    "stress",
    "housing",
    "homeless",
    "social",
    "violence",
    "intimate partner",
    "criminal",
    "transportation",
    "transport problem",
    "refugee",
    "medication review",
    "risk activity",
    "military service",
    "insurance",
    "income",
    "sterilization requested",
    "history of",
)

#: SNOMED semantic tags that are not diagnoses (a "(situation)" is history or an administrative state).
NON_CLINICAL_TAGS = ("(situation)", "(person)", "(social concept)", "(environment)")

#: Brand names and misspellings seen in Synthea medication displays -> ingredient names.
INGREDIENT_ALIASES = {
    "simvistatin": "simvastatin",
    "lasix": "furosemide",
    "camila": "norethindrone",
    "errin": "norethindrone",
    "jolivette": "norethindrone",
    "trinessa": "ethinyl estradiol / norgestimate",
    "yaz": "drospirenone / ethinyl estradiol",
    "seasonique": "ethinyl estradiol / levonorgestrel",
    "levora": "ethinyl estradiol / levonorgestrel",
    "natazia": "dienogest / estradiol",
    "mirena": "levonorgestrel",
    "nuvaring": "ethinyl estradiol / etonogestrel",
    "valium": "diazepam",
    "klonopin": "clonazepam",
    "tegretol": "carbamazepine",
}

_SALTS = {
    "hydrochloride",
    "hcl",
    "sodium",
    "potassium",
    "succinate",
    "tartrate",
    "bitartrate",
    "maleate",
    "hydrobromide",
    "besylate",
    "mesylate",
    "fumarate",
    "calcium",
    "magnesium",
    "dihydrate",
    "monohydrate",
}
_NOT_INGREDIENTS = {"inert ingredients", "pack"}
_KEEP_WITH_SALT = {"ferrous", "alendronic"}  # "ferrous sulfate" is the ingredient
_PREFIX = re.compile(r"^(\{[^}]*\}\s*|NDA\d+\s+|\d+(\.\d+)?\s*(HR|ML|ACTUAT|DAY|UNT)\b\s*)+", re.IGNORECASE)
_BRAND = re.compile(r"\[([^\]]+)\]")
_SEMANTIC_TAG = re.compile(
    r"\s*\((disorder|finding|situation|morphologic abnormality|person|procedure)\)\s*$"
)
_STRENGTH = re.compile(r"\s\d")


@dataclass(frozen=True, slots=True)
class ConceptKey:
    """A label of the model: kind (diagnosis or treatment), coding system, code and a display."""

    kind: str
    system: str
    code: str
    display: str

    @property
    def id(self) -> str:
        """Stable identifier used in label maps: `kind:code`."""
        return f"{self.kind}:{self.code}"


def clean_display(display: str) -> str:
    """'Essential hypertension (disorder)' -> 'Essential hypertension'."""
    return _SEMANTIC_TAG.sub("", display)


def is_clinical_condition(display: str | None) -> bool:
    """False for social findings and administrative situations, which are never labels."""
    if not display:
        return True
    text = display.lower()
    if any(text.rstrip().endswith(tag) for tag in NON_CLINICAL_TAGS):
        return False
    return not any(word in text for word in NON_CLINICAL_WORDS)


def diagnosis_key(condition: Condition) -> ConceptKey | None:
    """The diagnosis a Condition states, or None (no SNOMED code, or not a clinical diagnosis)."""
    concept = condition.code
    if concept is None:
        return None
    for coding in concept.codings:
        if coding.system == SNOMED and coding.code:
            display = coding.display or concept.text or coding.code
            if not is_clinical_condition(display):
                return None
            return ConceptKey(DIAGNOSIS, SNOMED, coding.code, clean_display(display))
    return None


def ingredient_name(display: str) -> str | None:
    """The ingredient(s) of an RxNorm clinical or branded drug display, lowercased, salts dropped."""
    text = re.sub(r"(?i)vitamin b 12", "vitamin b12", display.strip())
    pack = re.match(r"^\{\s*\d+\s*\((.*?)\)\s*\}", text)  # "{28 (Norethindrone 0.35 MG ...) } Pack"
    if pack:
        text = " / ".join(re.findall(r"\d+\s*\((.*?)\)", text)) or pack.group(1)
    brand = _BRAND.search(text)
    text = _BRAND.sub("", text).strip()
    text = _PREFIX.sub("", text).strip()
    names = []
    for part in text.split(" / "):
        part = _PREFIX.sub("", part.strip())
        cut = _STRENGTH.search(part)
        name = (part[: cut.start()] if cut else part).strip().lower()
        name = re.sub(r"\s+\d.*$", "", name)
        name = name.removesuffix(" day pack").strip()
        words = name.split()
        if len(words) > 1 and words[0] not in _KEEP_WITH_SALT:
            words = [w for w in words if w not in _SALTS] or words
        name = " ".join(words)
        name = re.sub(r"\d+(mg|ml)$", "", name).strip()
        if name and name not in _NOT_INGREDIENTS:
            names.append(INGREDIENT_ALIASES.get(name, name))
    if not names and brand:
        names.append(INGREDIENT_ALIASES.get(brand.group(1).strip().lower(), brand.group(1).strip().lower()))
    if not names:
        return None
    parts = sorted({p for name in names for p in name.split(" / ")})
    return " / ".join(parts)


def treatment_key(request: MedicationRequest) -> ConceptKey | None:
    """The ingredient group a MedicationRequest prescribes, or None without a usable code or display."""
    concept: Concept | None = request.code
    if concept is None:
        return None
    display = None
    for coding in concept.codings:
        if coding.display:
            display = coding.display
            break
    display = display or concept.text
    if not display:
        return None
    name = ingredient_name(display)
    if not name:
        return None
    return ConceptKey(TREATMENT, INGREDIENT_SYSTEM, name, name)
