"""fhir_fixtures/manifest.toml says what each fixture is for and what it should give: every fixture has an
entry, and every expectation holds for the model shipped in the package (its header says how to read it,
and how to update it after retraining)."""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from cds_plugin import errors
from cds_plugin.fhir import read_records
from cds_plugin.fhir.record import FACT_FIELDS, PatientRecord

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fhir_fixtures"
MANIFEST_FILE = FIXTURES / "manifest.toml"
NOT_FIXTURES = {"README.md", "build_fixtures.py", "manifest.toml"}
SECTIONS = ("patients", "requests", "edge", "bulk")
MANIFEST = tomllib.loads(MANIFEST_FILE.read_text())
SERVICES = {
    "diagnosis-considerations": "patient-view",
    "treatment-considerations": "patient-view",
    "order-select-review": "order-select",
    "order-sign-review": "order-sign",
}
FACT_NAMES = {name for name, _ in FACT_FIELDS}

# the keys each kind of expectation may hold (a misspelt key would otherwise check nothing)
ENTRY_KEYS = {"purpose", "expect", "note", "sandbox-call"}
PATIENT_KEYS = {"suggested", "documented", "implausible", "not_suggested", "reason", "note"}
SERVICE_KEYS = {"status", "cards", "suggestions", "not_cards", "min_cards", "readme", "reason", "note"}
RECORD_KEYS = {"patient", "facts", "unread", "skipped", "issues", "deceased", "undated", "medication_codes"}
READ_KEYS = RECORD_KEYS | {"read", "error", "error_says", "strict_error", "strict_error_says", "cut",
                           "records", "together", "note"}  # fmt: skip


def entries(section: str) -> list[tuple[str, dict[str, Any]]]:
    return sorted(MANIFEST.get(section, {}).items())


def _checked_with() -> str:
    return (
        f"(manifest checked on {MANIFEST['meta']['model_version']}; see the header of {MANIFEST_FILE.name})"
    )


# --- the manifest itself ---------------------------------------------------------------------------


def test_every_fixture_has_an_entry_and_every_entry_a_file():
    files = {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.name not in NOT_FIXTURES and "__pycache__" not in p.parts
    }
    named = {f"{section}/{name}" for section in SECTIONS for name, _ in entries(section)}
    assert sorted(files - named) == [], "fixtures without an entry in fhir_fixtures/manifest.toml"
    assert sorted(named - files) == [], "manifest entries without their file"
    assert set(MANIFEST) == {"meta", *SECTIONS}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_entry_has_a_purpose_and_only_known_keys(section):
    for name, entry in entries(section):
        purpose = entry.get("purpose")
        assert isinstance(purpose, str) and purpose.strip() and "\n" not in purpose, name
        assert set(entry) <= ENTRY_KEYS and "expect" in entry, (name, sorted(entry))
        expect = entry["expect"]
        if section == "patients":
            assert set(expect) <= PATIENT_KEYS, (name, sorted(set(expect) - PATIENT_KEYS))
            for service, exp in entry.get("sandbox-call", {}).items():
                assert service in SERVICES and set(exp) <= SERVICE_KEYS, (name, service, sorted(exp))
        elif section == "requests":
            hook = json.loads((FIXTURES / section / name).read_text())["hook"]
            assert expect, name
            for service, exp in expect.items():
                assert service in SERVICES, (name, service)
                assert set(exp) <= SERVICE_KEYS - {"readme"}, (name, service, sorted(exp))
                if SERVICES[service] != hook:
                    assert exp.get("status", 200) >= 400, f"{name} to {service}: another hook's service"
                if exp.get("cards") == 0 or exp.get("status", 200) != 200 or exp.get("suggestions") == 0:
                    assert exp.get("reason"), f"{name} to {service}: say why"
        else:
            _check_read_keys(name, expect)
        if section == "patients" and expect.get("suggested") == 0:
            assert expect.get("reason"), f"{name}: say why nothing is suggested"


def _check_read_keys(name: str, expect: dict[str, Any]) -> None:
    assert set(expect) <= READ_KEYS, (name, sorted(set(expect) - READ_KEYS))
    for fields in [expect.get("facts", {})] + [
        r.get("facts", {}) for r in expect.get("records", {}).values()
    ]:
        assert set(fields) <= FACT_NAMES, (name, sorted(set(fields) - FACT_NAMES))
    for further in expect.get("together", []):
        assert "read" in further, name
        _check_read_keys(name, further)


def test_the_readme_examples_are_fixtures_and_the_quick_start_shows_cards():
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"fhir_fixtures/((?:patients|requests|edge|bulk)/[\w.-]+)", readme))
    assert used, "README.md no longer uses a fixture"
    named = {f"{section}/{name}" for section in SECTIONS for name, _ in entries(section)}
    assert sorted(used - named) == []
    calls = [
        (name, service, exp)
        for name, entry in entries("patients")
        for service, exp in entry.get("sandbox-call", {}).items()
        if exp.get("readme")
    ]
    assert calls, "no manifest entry is marked as the README quick-start call (readme = true)"
    for name, service, exp in calls:
        assert f"--bundle fhir_fixtures/patients/{name}" in readme, name
        assert f"--service-id {service}" in readme, service
        assert exp.get("min_cards", 0) >= 1 or exp.get("cards"), "the README quick start must show cards"


# --- against the shipped model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def clock():
    """The clock of the one reference-time rule, stopped at the manifest's reference time."""
    at = MANIFEST["meta"]["reference_time"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cds_plugin.fhir.reference_time.utc_now", lambda: at)
        yield at


@pytest.fixture(scope="module")
def engine(clock):
    from cds_plugin import Engine

    return Engine.load()


@pytest.fixture(scope="module")
def client(clock, tmp_path_factory):
    """The shipped model behind the default settings (3 cards at most, none below p 0.10), JWT off."""
    from cds_plugin.settings import Settings
    from cds_plugin.web.app import create_app

    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path_factory.mktemp("manifest")),
        jwt_required=False,
        background_max_pending=0,
    )
    return create_app(settings).test_client()


def label_code(engine, name: str) -> str:
    """The preferred code of the consideration a manifest names (display or code)."""
    for label in engine.labels:
        if name in (label.code, *label.codes) or name.casefold() == label.display.casefold():
            return label.code
    raise AssertionError(f"the model has no consideration {name!r} {_checked_with()}")


def _candidates(assessment) -> str:
    """The model's best candidates for cards (plausible, not in the record), for failure messages."""
    best = [c for c in assessment.considerations if c.plausible and not c.documented][:10]
    return "\n".join(
        f"  {c.display}: p {c.probability:.3f} / threshold {c.threshold:.3f}"
        + (" (suggested)" if c.suggested else "")
        for c in best
    )


@pytest.mark.parametrize(("name", "entry"), entries("patients"), ids=[n for n, _ in entries("patients")])
def test_patient_bundles(engine, clock, name, entry):
    expect = entry["expect"]
    assessment = engine.assess(str(FIXTURES / "patients" / name))
    assert assessment.reference_time == clock
    said = f"{name}: the model gives\n{_candidates(assessment)}\n{_checked_with()}"

    def find(item: str):
        label_code(engine, item)  # a name the model does not have fails here
        found = assessment.find(item)
        assert found is not None, item
        return found

    if expect.get("suggested") == 0:
        assert [c.display for c in assessment.considerations if c.suggested] == [], said
    for item in expect.get("suggested") or []:
        assert find(item).suggested, f"{item} not suggested; {said}"
    for item in expect.get("documented", []):
        assert find(item).documented, f"{item} not documented; {said}"
    for item in expect.get("not_suggested", []):
        assert not find(item).suggested, f"{item} suggested; {said}"
    for item in expect.get("implausible", []):
        assert not find(item).plausible, f"{item} plausible at age {assessment.record.age:.1f}"


def check_answer(engine, resp, exp: dict[str, Any], where: str) -> None:
    status = exp.get("status", 200)
    answer = resp.get_json()
    assert resp.status_code == status, f"{where}: HTTP {resp.status_code}, {answer}"
    if status != 200:
        assert answer["resourceType"] == "OperationOutcome", where
        return
    cards = answer["cards"]
    topics = [card["source"].get("topic", {}).get("code") for card in cards]
    said = f"{where}: the cards are {[c['summary'] for c in cards]} {_checked_with()}"
    if exp.get("cards") == 0:
        assert cards == [], said
    for item in exp.get("cards") or []:
        code = label_code(engine, item)
        proposing = [t for t, card in zip(topics, cards, strict=True) if card.get("suggestions")]
        assert code in proposing, f"no card proposes {item}; {said}"
    if exp.get("suggestions") == 0:
        assert not any(card.get("suggestions") for card in cards), said
    assert len(cards) >= exp.get("min_cards", 0), said
    for item in exp.get("not_cards", []):
        assert label_code(engine, item) not in topics, f"a card about {item}; {said}"


REQUEST_CASES = [
    (name, service, exp)
    for name, entry in entries("requests")
    for service, exp in sorted(entry["expect"].items())
]


@pytest.mark.parametrize(
    ("name", "service", "exp"), REQUEST_CASES, ids=[f"{n}-{s}" for n, s, _ in REQUEST_CASES]
)
def test_request_bodies(engine, client, name, service, exp):
    body = json.loads((FIXTURES / "requests" / name).read_text())
    check_answer(engine, client.post(f"/cds-services/{service}", json=body), exp, f"{name} to {service}")


SANDBOX_CASES = [
    (name, service, exp)
    for name, entry in entries("patients")
    for service, exp in sorted(entry.get("sandbox-call", {}).items())
]


@pytest.mark.parametrize(
    ("name", "service", "exp"), SANDBOX_CASES, ids=[f"{n}-{s}" for n, s, _ in SANDBOX_CASES]
)
def test_sandbox_calls_with_bundles(engine, client, name, service, exp):
    """The request `cds-plugin sandbox call --bundle` sends: context and the full prefetch from the bundle."""
    from cds_plugin.sandbox.client import BundleSource, build_context, build_prefetch
    from cds_plugin.sandbox.fhir_store import FhirStore

    discovered = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}[service]
    store = FhirStore.load(FIXTURES / "patients" / name)
    source = BundleSource(store, None, f"bundle {name}")
    (patient,) = store.all("Patient")
    context = build_context(discovered["hook"], source, str(patient["id"]))
    prefetch = build_prefetch(discovered["prefetch"], context, source)
    body = {"hook": discovered["hook"], "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch.data:
        body["prefetch"] = prefetch.data
    check_answer(
        engine, client.post(f"/cds-services/{service}", json=body), exp, f"sandbox call {name} {service}"
    )


def _source(reads: list[str]) -> Any:
    paths = [str(FIXTURES / r) for r in reads]
    return paths[0] if len(paths) == 1 else paths


def _fact_counts(record: PatientRecord) -> dict[str, int]:
    return {name: len(getattr(record, name)) for name, _ in FACT_FIELDS if getattr(record, name)}


def check_record(record: PatientRecord, exp: dict[str, Any], where: str) -> None:
    if "patient" in exp:
        assert record.patient.reference == exp["patient"], where
    if "facts" in exp:
        assert _fact_counts(record) == exp["facts"], where
    if "unread" in exp:
        assert dict(record.unread) == exp["unread"], where
    if "skipped" in exp:
        assert dict(record.skipped) == exp["skipped"], where
    for text in exp.get("issues", []):
        assert any(text in issue for issue in record.issues), (
            f"{where}: no issue says {text!r}: {record.issues}"
        )
    if "deceased" in exp:
        assert record.deceased is exp["deceased"], where
    if exp.get("undated"):
        assert record.patient.birth_date is None and record.patient.sex is None, where
        assert [f.reference for f in record.facts() if f.resource_type != "Patient" and f.date] == [], where
        assert record.data_until is None, where
    if "medication_codes" in exp:
        codes = {code for m in record.medication_requests if m.code for code in m.code.codes()}
        assert codes == set(exp["medication_codes"]), where


def check_read(reads: list[str], exp: dict[str, Any], where: str) -> None:
    source = _source(reads)
    if "error" in exp:
        with pytest.raises(getattr(errors, exp["error"])) as raised:
            list(read_records(source))
        assert exp.get("error_says", "") in str(raised.value), where
    else:
        records = list(read_records(source))
        if "records" in exp:
            by_patient = {r.patient.reference: r for r in records}
            assert sorted(by_patient) == sorted(exp["records"]), where
            for reference, record_exp in exp["records"].items():
                check_record(by_patient[reference], record_exp, f"{where}, {reference}")
            for record in records:
                check_record(record, {k: v for k, v in exp.items() if k in RECORD_KEYS}, where)
        else:
            assert len(records) == 1, f"{where}: {len(records)} records"
            check_record(records[0], exp, where)
        for cut in exp.get("cut", []):
            (record,) = read_records(source, as_of=cut["as_of"])
            check_record(record, cut, f"{where} as of {cut['as_of']}")
    if "strict_error" in exp:
        with pytest.raises(getattr(errors, exp["strict_error"])) as raised:
            list(read_records(source, strict=True))
        assert exp.get("strict_error_says", "") in str(raised.value), where
    elif "error" not in exp:
        list(read_records(source, strict=True))  # nothing malformed: the strict read gives the same
    for further in exp.get("together", []):
        check_read(further["read"], further, f"{where} with {further['read']}")


READ_CASES = [
    (section, name, entry["expect"]) for section in ("edge", "bulk") for name, entry in entries(section)
]


@pytest.mark.parametrize(("section", "name", "exp"), READ_CASES, ids=[f"{s}/{n}" for s, n, _ in READ_CASES])
def test_edge_and_bulk_files_read_as_said(clock, section, name, exp):
    check_read(exp.get("read", [f"{section}/{name}"]), exp, f"{section}/{name}")
