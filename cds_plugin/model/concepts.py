"""Kinds of considerations, their coding systems, and the ingredient of a medication display.

Which codes make up each consideration is data (labels.toml, read by label_space.py). What stays here is
the one rule that data cannot list: the ingredient of an RxNorm product read from its display
("Simvastatin 20 MG Oral Tablet [Zocor]" -> "simvastatin"; combinations "amoxicillin / clavulanate",
sorted; salts dropped, "metoprolol succinate" -> "metoprolol"; a short table of brand names and
misspellings seen in Synthea), so a product the label file does not list still finds its consideration.
"""

from __future__ import annotations

import re

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

DIAGNOSIS = "diagnosis"
TREATMENT = "treatment"
KINDS = (DIAGNOSIS, TREATMENT)

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
_STRENGTH = re.compile(r"\s\d")


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
