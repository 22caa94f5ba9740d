"""docs/conformance.md traces every Service-side requirement of the CDS Hooks 2.0 requirements list
(../shared/cds-hooks-schemas/requirements/cds-hooks_2.0_requirements.csv, MITRE/Inferno numbering) to
the tests that cover it, or says why it does not apply (issue 2).

Checked here:
(a) every requirement whose actors include "Service" has exactly one row, no row names another id,
    and each row's level (SHALL, SHOULD, ...) is the list's;
(b) every row cites at least one test, or starts with "n/a:" or "pending:" and gives a reason;
(c) every cited `tests/...py::test_name` exists: the file is there and defines `def test_name`;
(d) for tests in files owned by the conformance work (tests/hooks/test_conformance_extra.py), the test's
    docstring names the requirement id ("req 74" / "Req 1, 3, 14"). Other test files belong to other
    work and name requirements in their own way (module docstrings, ranges such as "80-147"), so (d)
    is not applied to them; (c) still is.
(a) is skipped when the requirements list is not available (set CDS_PLUGIN_SCHEMAS to its folder).
"""

from __future__ import annotations

import ast
import csv
import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conformance.md"
SCHEMAS = Path(os.environ.get("CDS_PLUGIN_SCHEMAS", ROOT.parent / "shared" / "cds-hooks-schemas"))
CSV = SCHEMAS / "requirements" / "cds-hooks_2.0_requirements.csv"
#: Test files whose test docstrings must name every requirement id cited for them, check (d).
OWNED = {"tests/hooks/test_conformance_extra.py"}

ROW = re.compile(r"^\|\s*\[?(\d+)\]?(?:\([^)]*\))?\s*\|(.*)\|\s*$")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
REQ_LIST = re.compile(r"\breq\.?\s+((?:\d+)(?:\s*(?:,|and)\s*\d+)*)", re.IGNORECASE)


def doc_rows() -> dict[str, list[dict[str, str]]]:
    """Requirement rows of the doc's table by id: level, paraphrase and coverage cells."""
    rows: dict[str, list[dict[str, str]]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in match.group(2).split("|")]
        assert len(cells) == 3, f"row {match.group(1)} needs 4 columns: {line}"
        level, requirement, coverage = cells
        rows.setdefault(match.group(1), []).append(
            {"level": level, "requirement": requirement, "coverage": coverage}
        )
    return rows


def service_requirements() -> dict[str, dict[str, str]]:
    if not CSV.exists():
        pytest.skip(f"CDS Hooks requirements list not found at {CSV}")
    with CSV.open(newline="", encoding="utf-8") as f:
        return {r["ID"]: r for r in csv.DictReader(f) if "Service" in r["Actors"]}


@cache
def defined_tests(path: str) -> dict[str, str]:
    """`def test_*` functions of a test file, with their docstrings."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {
        node.name: ast.get_docstring(node) or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def named_ids(docstring: str) -> set[str]:
    """Requirement ids a docstring names after "req": "Req 1, 3 and 14" -> {"1", "3", "14"}."""
    return {n for group in REQ_LIST.findall(docstring) for n in re.findall(r"\d+", group)}


def test_every_service_requirement_has_exactly_one_row():
    """(a): one row per Service-side requirement, none for other ids, levels as in the list."""
    required = service_requirements()
    rows = doc_rows()
    assert sorted(set(required) - set(rows), key=int) == [], "Service-side requirements without a row"
    assert sorted(set(rows) - set(required), key=int) == [], "rows for ids that are not Service-side"
    assert {rid: len(r) for rid, r in rows.items() if len(r) > 1} == {}, "requirements with several rows"
    wrong = {
        rid: (r[0]["level"], required[rid]["Conformance"])
        for rid, r in rows.items()
        if r[0]["level"] != required[rid]["Conformance"]
    }
    assert wrong == {}, "level differs from the requirements list (doc, list)"


def test_every_row_cites_tests_or_gives_a_reason():
    """(b): a row either cites tests, or says n/a or pending with a reason."""
    rows = doc_rows()
    assert len(rows) >= 100, f"only {len(rows)} requirement rows parsed from {DOC}"
    bad = {}
    for rid, (row, *_) in rows.items():
        coverage = row["coverage"]
        if not row["requirement"]:
            bad[rid] = "no paraphrase"
        elif re.match(r"(n/a|pending):\s*\S", coverage):
            continue
        elif not TEST_REF.search(coverage):
            bad[rid] = coverage
    assert bad == {}


def test_cited_tests_exist_and_owned_ones_name_the_requirement():
    """(c) for every cited test, (d) for tests in OWNED files (see the module docstring)."""
    missing, unnamed = [], []
    for rid, (row, *_) in doc_rows().items():
        for path, name in TEST_REF.findall(row["coverage"]):
            if not (ROOT / path).is_file() or name not in defined_tests(path):
                missing.append(f"req {rid}: {path}::{name}")
            elif path in OWNED and rid not in named_ids(defined_tests(path)[name]):
                unnamed.append(f"req {rid}: {path}::{name}")
    assert missing == [], "cited tests that do not exist"
    assert unnamed == [], "cited tests whose docstring does not name the requirement"


def test_named_ids_reads_requirement_lists():
    assert named_ids("Req 1, 3, 14, 76: JSON") == {"1", "3", "14", "76"}
    assert named_ids("Covers req 201 and 203 (alg)") == {"201", "203"}
    assert named_ids("Req 27 (partial): within 500 ms") == {"27"}


def test_known_gaps_are_numbered_one_to_n():
    """The Known gaps list counts 1, 2, 3, ...: a gap that is fixed leaves, and the rest are renumbered."""
    text = DOC.read_text(encoding="utf-8")
    gaps = text[text.index("## Known gaps") :].split("\n## ")[0]
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", gaps, re.MULTILINE)]
    assert numbers and numbers == list(range(1, len(numbers) + 1))
