"""The loopback FHIR server over real HTTP: read, search parameters, paging, sorting, token, urn:uuid."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from cds_plugin.sandbox.fhir_server import FhirServer

TIMEOUT = 5


def get(url: str, **params: Any) -> requests.Response:
    return requests.get(url, params=params, timeout=TIMEOUT)


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def search_ids(base: str, rtype: str, params: dict[str, Any] | list[tuple[str, str]]) -> list[str]:
    response = requests.get(f"{base}/{rtype}", params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return ids(response.json())


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == relation), None)


# --- metadata, read ------------------------------------------------------------------------------


def test_metadata_is_a_capability_statement(base: str) -> None:
    response = get(f"{base}/metadata")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    cap = response.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    assert cap["kind"] == "instance"
    resources = {r["type"]: r for r in cap["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Condition", "MedicationRequest", "Encounter"} <= set(resources)
    obs_params = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert obs_params["patient"] == "reference"
    assert obs_params["code"] == "token"
    assert obs_params["date"] == "date"
    assert {"clinical-status", "category"} <= {p["name"] for p in resources["Condition"]["searchParam"]}
    assert "intent" in {p["name"] for p in resources["MedicationRequest"]["searchParam"]}
    assert {i["code"] for i in resources["Observation"]["interaction"]} == {"read", "search-type"}
    assert "security" not in cap["rest"][0]


def test_read(base: str) -> None:
    response = get(f"{base}/Patient/p1")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["ETag"] == 'W/"3"'
    body = response.json()
    assert body["resourceType"] == "Patient"
    assert body["id"] == "p1"
    assert get(f"{base}/Observation/a1c-03").json()["effectiveDateTime"] == "2019-07-15"
    assert get(f"{base}/Procedure/pr1").status_code == 200  # from a single-resource file


def test_read_unknown_id_is_404_with_operation_outcome(base: str) -> None:
    response = get(f"{base}/Patient/nobody")
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert outcome["issue"][0]["code"] == "not-found"


def test_unknown_type_and_path_are_404(base: str) -> None:
    for url in (f"{base}/Spaceship/1", f"{base}/Spaceship", f"{base}/Patient/p1/extra/bits"):
        response = get(url)
        assert response.status_code == 404, url
        assert response.json()["resourceType"] == "OperationOutcome"
    assert get(f"{base}/Spaceship").json()["issue"][0]["code"] == "not-supported"


def test_known_type_without_data_gives_an_empty_searchset(base: str) -> None:
    bundle = get(f"{base}/AllergyIntolerance", patient="p1").json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 0
    assert "entry" not in bundle


def test_writes_are_refused(base: str) -> None:
    response = requests.put(
        f"{base}/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, timeout=TIMEOUT
    )
    assert response.status_code == 405
    assert response.json()["issue"][0]["code"] == "not-supported"


# --- searchset shape, reference params ---------------------------------------------------------------


def test_searchset_bundle_shape(base: str) -> None:
    response = get(f"{base}/Condition", patient="p1")
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 3
    for entry in bundle["entry"]:
        assert entry["search"]["mode"] == "match"
        assert entry["fullUrl"] == f"{base}/Condition/{entry['resource']['id']}"
    assert link(
        bundle,
        "self",
    ).startswith(f"{base}/Condition?")
    assert link(bundle, "next") is None
    assert link(bundle, "previous") is None


def test_patient_and_subject_accept_id_and_type_slash_id(base: str) -> None:
    expected = {"c-diabetes", "c-htn", "c-pharyngitis"}
    assert set(search_ids(base, "Condition", {"patient": "p1"})) == expected
    assert set(search_ids(base, "Condition", {"patient": "Patient/p1"})) == expected
    assert set(search_ids(base, "Condition", {"subject": "Patient/p1"})) == expected
    assert set(search_ids(base, "Condition", {"subject": "p1"})) == expected
    assert set(search_ids(base, "Condition", {"subject:Patient": "p1"})) == expected
    assert set(search_ids(base, "Condition", {"patient": f"{base}/Patient/p1"})) == expected
    assert search_ids(base, "Condition", {"patient": "Group/p1"}) == []
    assert search_ids(base, "Condition", {"patient": "p1,nobody"}) != []
    assert search_ids(base, "Condition", {"patient": "nobody"}) == []
    assert len(search_ids(base, "Observation", {"patient": "p1"})) == 14
    assert search_ids(base, "Immunization", {"patient": "p1"}) == ["im1"]  # Immunization.patient
    assert search_ids(base, "Encounter", {"patient": "p1"}) == ["e1"]


def test_id_param(base: str) -> None:
    assert set(search_ids(base, "Observation", {"_id": "a1c-01,a1c-02,missing"})) == {"a1c-01", "a1c-02"}
    assert search_ids(base, "Patient", {"_id": "p1"}) == ["p1"]


# --- token params -------------------------------------------------------------------------------------


def test_code_token_forms(base: str, facts: SimpleNamespace) -> None:
    a1c = set(facts.a1c_ids)
    assert set(search_ids(base, "Observation", {"patient": "p1", "code": "http://loinc.org|4548-4"})) == a1c
    assert set(search_ids(base, "Observation", {"patient": "p1", "code": "4548-4"})) == a1c
    assert search_ids(base, "Observation", {"patient": "p1", "code": "http://snomed.info/sct|4548-4"}) == []
    assert search_ids(base, "Observation", {"patient": "p1", "code": "|4548-4"}) == []  # no system: none
    assert len(search_ids(base, "Observation", {"patient": "p1", "code": "http://loinc.org|"})) == 14
    both = search_ids(base, "Observation", {"patient": "p1", "code": "http://loinc.org|85354-9,2339-0"})
    assert set(both) == {"bp-1", "glucose-1"}
    # any coding of a CodeableConcept matches
    assert search_ids(base, "Condition", {"code": "http://hl7.org/fhir/sid/icd-10-cm|E11.9"}) == [
        "c-diabetes"
    ]
    # MedicationRequest `code` is medicationCodeableConcept
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm|860975"
    assert search_ids(base, "MedicationRequest", {"code": rxnorm}) == ["m-metformin"]
    assert search_ids(base, "Immunization", {"vaccine-code": "140"}) == ["im1"]


def test_repeated_token_params_are_and(base: str) -> None:
    params = [("patient", "p1"), ("code", "4548-4,85354-9"), ("category", "vital-signs")]
    assert search_ids(base, "Observation", params) == ["bp-1"]


def test_category_clinical_status_status_intent(base: str) -> None:
    assert search_ids(base, "Condition", {"patient": "p1", "category": "encounter-diagnosis"}) == [
        "c-pharyngitis"
    ]
    cat = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
    assert search_ids(base, "Observation", {"category": cat}) == ["bp-1"]
    assert set(search_ids(base, "Condition", {"patient": "p1", "clinical-status": "active"})) == {
        "c-diabetes",
        "c-htn",
    }
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical|resolved"
    assert search_ids(base, "Condition", {"clinical-status": clinical}) == ["c-pharyngitis"]
    assert set(search_ids(base, "Observation", {"patient": "p1", "status": "amended,preliminary"})) == {
        "a1c-06",
        "a1c-11",
    }
    assert set(search_ids(base, "MedicationRequest", {"patient": "p1", "status": "active"})) == {
        "m-metformin",
        "m-atorvastatin",
    }
    assert search_ids(base, "MedicationRequest", {"patient": "p1", "intent": "plan"}) == ["m-atorvastatin"]
    assert search_ids(base, "Encounter", {"status": "finished", "patient": "p1"}) == ["e1"]
    assert search_ids(base, "Patient", {"identifier": "urn:example:mrn|MRN-0001"}) == ["p1"]
    assert search_ids(base, "Patient", {"gender": "female"}) == ["p1"]


# --- dates ----------------------------------------------------------------------------------------------


def a1c(params: list[tuple[str, str]], base: str) -> list[str]:
    return search_ids(base, "Observation", [("patient", "p1"), ("code", "4548-4"), *params])


def test_date_prefixes_at_day_precision(base: str) -> None:
    assert a1c([("date", "2020-04-15")], base) == ["a1c-06"]
    assert a1c([("date", "eq2020-04-15")], base) == ["a1c-06"]
    assert a1c([("date", "lt2019-07-15")], base) == ["a1c-01", "a1c-02"]
    assert a1c([("date", "le2019-07-15")], base) == ["a1c-01", "a1c-02", "a1c-03"]
    assert a1c([("date", "gt2021-04-15")], base) == ["a1c-11", "a1c-12"]
    assert a1c([("date", "ge2021-04-15")], base) == ["a1c-10", "a1c-11", "a1c-12"]
    assert len(a1c([("date", "ne2020-04-15")], base)) == 11
    # a dateTime inside the day counts as that day
    assert a1c([("date", "2021-01-15")], base) == ["a1c-09"]
    assert a1c([("date", "lt2021-01-15T09:30:00Z")], base)[-1] == "a1c-08"
    assert a1c([("date", "le2021-01-15T09:30:00Z")], base)[-1] == "a1c-09"


def test_date_month_and_year_precision(base: str) -> None:
    assert a1c([("date", "2020-04")], base) == ["a1c-06"]
    assert a1c([("date", "2020")], base) == ["a1c-05", "a1c-06", "a1c-07", "a1c-08"]
    assert a1c([("date", "lt2020")], base) == ["a1c-01", "a1c-02", "a1c-03", "a1c-04"]
    assert a1c([("date", "gt2020")], base) == ["a1c-09", "a1c-10", "a1c-11", "a1c-12"]
    assert a1c([("date", "ge2021-10")], base) == ["a1c-12"]
    assert a1c([("date", "le2019-01")], base) == ["a1c-01"]


def test_repeated_date_params_are_and(base: str) -> None:
    assert a1c([("date", "ge2020-01-01"), ("date", "lt2020-07-01")], base) == ["a1c-05", "a1c-06"]
    assert a1c([("date", "gt2020"), ("date", "lt2020")], base) == []


def test_comma_in_date_is_or(base: str) -> None:
    assert a1c([("date", "2019-01,2021-10")], base) == ["a1c-01", "a1c-12"]


def test_resource_dates_are_ranges_at_their_precision(base: str) -> None:
    # c-htn has onsetDateTime "2018": the whole year
    assert search_ids(base, "Condition", {"patient": "p1", "date": "2018"}) == ["c-htn"]
    assert search_ids(base, "Condition", {"patient": "p1", "date": "2018-06"}) == []  # not within June
    assert "c-htn" in search_ids(base, "Condition", {"patient": "p1", "date": "ge2018-06-01"})  # overlaps
    assert "c-htn" in search_ids(base, "Condition", {"patient": "p1", "date": "le2018-06-01"})


def test_time_zones_are_compared_in_utc(base: str) -> None:
    # bp-1 is 2020-06-01T08:30:00+02:00 = 06:30 UTC
    vitals = [("patient", "p1"), ("category", "vital-signs")]
    assert search_ids(base, "Observation", [*vitals, ("date", "2020-06-01")]) == ["bp-1"]
    assert search_ids(base, "Observation", [*vitals, ("date", "lt2020-06-01T07:00:00Z")]) == ["bp-1"]
    assert search_ids(base, "Observation", [*vitals, ("date", "ge2020-06-01T07:00:00Z")]) == []
    assert search_ids(base, "Observation", [*vitals, ("date", "eq2020-06-01T08:30:00+02:00")]) == ["bp-1"]
    # an unencoded `+` arrives as a space; it is still understood
    raw = requests.get(
        f"{base}/Observation?patient=p1&category=vital-signs&date=eq2020-06-01T08:30:00+02:00", timeout=5
    )
    assert ids(raw.json()) == ["bp-1"]


def test_main_date_of_each_resource_type(base: str) -> None:
    # Observation falls back to `issued`, Condition to recordedDate
    assert search_ids(base, "Observation", {"patient": "p1", "date": "2022-02-02"}) == ["glucose-1"]
    assert search_ids(base, "Condition", {"patient": "p1", "date": "2021-11-02"}) == ["c-pharyngitis"]
    assert search_ids(base, "Condition", {"patient": "p1", "date": "2015"}) == ["c-diabetes"]
    assert search_ids(base, "MedicationRequest", {"patient": "p1", "date": "ge2018"}) == [
        "m-lisinopril",
        "m-atorvastatin",
    ]
    assert search_ids(base, "Encounter", {"patient": "p1", "date": "2021-11-02"}) == ["e1"]
    assert search_ids(base, "Procedure", {"patient": "p1", "date": "2019-07"}) == ["pr1"]
    assert search_ids(base, "Immunization", {"patient": "p1", "date": "lt2021"}) == ["im1"]
    assert search_ids(base, "Patient", {"birthdate": "1960"}) == ["p1"]


@pytest.mark.parametrize("value", ["2020-13-01", "yesterday", "ap2020", "2020-02-30", "2020-1-1"])
def test_bad_date_is_400(base: str, value: str) -> None:
    response = get(f"{base}/Observation", patient="p1", date=value)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["code"] == "value"
    assert issue["expression"] == ["date"]


@pytest.mark.parametrize(
    ("name", "value"), [("_count", "-1"), ("_count", "many"), ("_offset", "x"), ("patient", "a/b/")]
)
def test_bad_values_are_400(base: str, name: str, value: str) -> None:
    response = get(f"{base}/Observation", **{name: value})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


# --- ordering and paging -----------------------------------------------------------------------------


def test_default_order_is_date_then_id(base: str, facts: SimpleNamespace) -> None:
    got = a1c([], base)
    assert got == facts.a1c_ids
    everything = search_ids(base, "Observation", {"patient": "p1"})
    assert everything[-1] == "glucose-1"  # 2022, via issued


def test_sort(base: str, facts: SimpleNamespace) -> None:
    expected = facts.a1c_ids
    assert a1c([("_sort", "-date")], base) == expected[::-1]
    assert a1c([("_sort", "date")], base) == expected
    assert a1c([("_sort", "-_id")], base) == sorted(expected, reverse=True)
    # undated resources go last whichever the direction
    conditions = search_ids(base, "MedicationRequest", {"_sort": "-date"})
    assert conditions == ["m-atorvastatin", "m-lisinopril", "m-metformin"]


def test_sort_by_unsupported_key_is_reported(base: str) -> None:
    bundle = get(f"{base}/Observation", patient="p1", _sort="value-quantity").json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "value-quantity" in outcome[0]["resource"]["issue"][0]["diagnostics"]


@pytest.mark.parametrize("sort", [None, "-date", "_id"])
def test_paging_follows_next_links_without_loss_or_duplicates(base: str, sort: str | None) -> None:
    params: dict[str, Any] = {"patient": "p1", "_count": 4}
    if sort:
        params["_sort"] = sort
    full = search_ids(
        base, "Observation", {k: v for k, v in params.items() if k != "_count"} | {"_count": 100}
    )
    assert len(full) == 14
    url: str | None = f"{base}/Observation"
    seen: list[str] = []
    pages = 0
    query: dict[str, Any] | None = params
    while url:
        bundle = requests.get(url, params=query, timeout=TIMEOUT).json()
        query = None  # next links carry their own query
        assert bundle["total"] == 14
        page_ids = ids(bundle)
        assert len(page_ids) <= 4
        seen.extend(page_ids)
        pages += 1
        if pages > 1:
            assert link(bundle, "previous") is not None
        url = link(bundle, "next")
        assert pages < 10
    assert pages == 4
    assert seen == full  # same order, nothing lost, nothing twice


def test_paging_links(base: str, facts: SimpleNamespace) -> None:
    bundle = get(f"{base}/Observation", patient="p1", code="4548-4", _count=5, _offset=5).json()
    assert ids(bundle) == facts.a1c_ids[5:10]
    prev = requests.get(link(bundle, "previous"), timeout=TIMEOUT).json()
    assert ids(prev) == facts.a1c_ids[:5]
    nxt = requests.get(link(bundle, "next"), timeout=TIMEOUT).json()
    assert ids(nxt) == facts.a1c_ids[10:]
    assert link(nxt, "next") is None
    first = requests.get(link(bundle, "first"), timeout=TIMEOUT).json()
    assert ids(first) == ids(prev)
    assert "code=4548-4" in link(bundle, "self")


def test_default_page_size_and_offset_past_the_end(fhir_data: Path) -> None:
    with FhirServer(fhir_data, page_size_default=3) as server:
        bundle = get(f"{server.base_url}/Observation", patient="p1").json()
        assert len(ids(bundle)) == 3
        assert bundle["total"] == 14
        assert "_count=3" in link(bundle, "next")
        past = get(f"{server.base_url}/Observation", patient="p1", _offset=100).json()
        assert ids(past) == []
        assert past["total"] == 14
        assert link(past, "next") is None


def test_count_zero_and_summary_count_give_only_the_total(base: str) -> None:
    for params in ({"_count": 0}, {"_summary": "count"}):
        bundle = get(f"{base}/Observation", patient="p1", **params).json()
        assert bundle["total"] == 14
        assert "entry" not in bundle
        assert link(bundle, "next") is None


# --- unknown parameters --------------------------------------------------------------------------------


def test_unknown_params_are_ignored_and_reported(base: str) -> None:
    bundle = get(f"{base}/Condition", patient="p1", **{"onset-age": "30", "code:text": "diabetes"}).json()
    assert bundle["total"] == 3  # not filtered by the ignored ones
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(matches) == 3
    assert len(outcomes) == 1
    outcome = outcomes[0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert {i["severity"] for i in outcome["issue"]} == {"warning"}
    assert "onset-age" in text
    assert ":text" in text
    assert "onset-age" not in link(bundle, "self")
    # a parameter that exists elsewhere but not on this type is unknown too
    mr = get(f"{base}/Observation", patient="p1", intent="order").json()
    assert mr["total"] == 14
    assert any(e["search"]["mode"] == "outcome" for e in mr["entry"])


def test_format_and_empty_params_are_silently_accepted(base: str) -> None:
    bundle = get(f"{base}/Condition", patient="p1", _format="json", code="").json()
    assert bundle["total"] == 3
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])


def test_post_search(base: str) -> None:
    response = requests.post(
        f"{base}/Condition/_search", data={"patient": "p1", "clinical-status": "resolved"}, timeout=5
    )
    assert response.status_code == 200
    assert ids(response.json()) == ["c-pharyngitis"]


# --- urn:uuid rewriting --------------------------------------------------------------------------------


def test_urn_uuid_references_are_rewritten(base: str, facts: SimpleNamespace) -> None:
    patient = get(f"{base}/Patient/{facts.p2}")
    assert patient.status_code == 200  # the Patient had no id: it takes the urn:uuid's
    assert patient.json()["gender"] == "male"
    condition = get(f"{base}/Condition/c-p2-diabetes").json()
    assert condition["subject"] == {"reference": f"Patient/{facts.p2}"}
    assert condition["encounter"] == {"reference": f"Encounter/{facts.p2_encounter}"}
    assert search_ids(base, "Condition", {"patient": facts.p2}) == ["c-p2-diabetes"]
    assert search_ids(base, "Observation", {"patient": f"Patient/{facts.p2}"}) == [facts.p2_observation]
    assert search_ids(base, "Observation", {"encounter": facts.p2_encounter}) == [facts.p2_observation]
    assert search_ids(base, "Encounter", {"subject": facts.p2}) == [facts.p2_encounter]
    # the same diabetes code across both patients, each under its own id
    assert set(search_ids(base, "Condition", {"code": "44054006"})) == {"c-diabetes", "c-p2-diabetes"}


# --- bearer token ---------------------------------------------------------------------------------------


def test_bearer_token(fhir_data: Path) -> None:
    with FhirServer(fhir_data, token="s3cret") as server:
        url = f"{server.base_url}/Patient/p1"
        missing = requests.get(url, timeout=TIMEOUT)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert missing.json()["issue"][0]["code"] == "security"
        for header in ("Bearer wrong", "Basic s3cret", "Bearer", "s3cret"):
            response = requests.get(url, headers={"Authorization": header}, timeout=TIMEOUT)
            assert response.status_code == 401, header
            assert "s3cret" not in response.text
        good = requests.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=TIMEOUT)
        assert good.status_code == 200
        assert good.json()["id"] == "p1"
        search = requests.get(
            f"{server.base_url}/Condition",
            params={"patient": "p1"},
            headers={"Authorization": "bearer s3cret"},
            timeout=5,
        )
        assert search.status_code == 200
        assert requests.get(f"{server.base_url}/Condition", timeout=TIMEOUT).status_code == 401
        assert requests.get(f"{server.base_url}/Nope/1", timeout=TIMEOUT).status_code == 401  # before routing
        metadata = requests.get(f"{server.base_url}/metadata", timeout=TIMEOUT)
        assert metadata.status_code == 200
        assert "security" in metadata.json()["rest"][0]


# --- lifecycle, in-memory data, logging ---------------------------------------------------------------------


def test_in_memory_data_and_lifecycle() -> None:
    data = [
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                    "resource": {"resourceType": "Patient"},
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "id": "o1",
                        "status": "final",
                        "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                    }
                },
            ],
        },
        {"resourceType": "Practitioner", "id": "dr1"},
    ]
    server = FhirServer(data)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    try:
        base = server.base_url
        assert base.startswith("http://127.0.0.1:")
        assert base.endswith("/fhir")
        assert search_ids(base, "Observation", {"patient": "11111111-1111-1111-1111-111111111111"}) == ["o1"]
        assert get(f"{base}/Practitioner/dr1").status_code == 200
        assert get(f"{base}/Practitioner", _id="dr1").json()["total"] == 1
    finally:
        server.stop()
    server.stop()  # twice is fine
    # the caller's dicts are not rewritten
    assert data[0]["entry"][1]["resource"]["subject"]["reference"].startswith("urn:uuid:")
    assert "id" not in data[0]["entry"][0]["resource"]
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        sock.settimeout(1)
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # the port is released


def test_logs_carry_no_patient_data(fhir_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FhirServer(fhir_data, token="s3cr3t-x") as server:
        auth = {"Authorization": "Bearer s3cr3t-x"}
        requests.get(f"{server.base_url}/Patient/p1", headers=auth, timeout=TIMEOUT)
        requests.get(f"{server.base_url}/Observation?patient=p1&code=4548-4", headers=auth, timeout=TIMEOUT)
        requests.get(f"{server.base_url}/Patient/nobody", timeout=TIMEOUT)
    ours = [r for r in caplog.records if r.name.startswith(("cds_plugin", "werkzeug"))]
    text = "\n".join(r.getMessage() for r in ours)
    assert "/fhir/Observation" in text  # requests are logged ...
    for secret in ("p1", "4548-4", "MRN-0001", "1960-05-17", "nobody", "s3cr3t-x"):
        assert secret not in text  # ... without ids, query values or contents
