"""Fuzzing the running app from its own /openapi.json, with the clinical services on the tiny model.

schemathesis generates valid and invalid requests for every documented operation (at least
FUZZ_EXAMPLES calls each, counted) and checks each answer: never a 5xx, a documented status code,
content type, headers and body schema, and invalid input refused. Every call has a wall-clock limit
(no hang). Reproducible: derandomized, no example database. The app never leaves the machine: its HTTP
session for FHIR servers refuses every connection, so a generated `fhirServer` is never reached.

Run longer locally with e.g. `CDS_PLUGIN_FUZZ_EXAMPLES=20000 CDS_PLUGIN_FUZZ_SEED=7 pytest
tests/web/test_fuzz.py` (docs/security.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app

FUZZ_EXAMPLES = int(os.environ.get("CDS_PLUGIN_FUZZ_EXAMPLES", "1000"))
FUZZ_SEED = int(os.environ.get("CDS_PLUGIN_FUZZ_SEED", "0"))
#: Wall-clock limit of one call: the slowest legitimate one (model, 3 cards) takes well under a second.
PER_CALL_S = 20.0
#: What an invalid request may be answered with (the OperationOutcome statuses of /openapi.json).
REJECTED = ["400", "401", "403", "404", "405", "409", "412", "413"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class NoNetwork(requests.adapters.HTTPAdapter):
    """Every FHIR-server connection is refused: generated requests name arbitrary servers."""

    def send(self, request, *args, **kwargs):  # type: ignore[override]
        raise requests.ConnectionError("network refused in tests")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """In memory where the machine has /dev/shm: the database commits with fsync (synchronous=FULL), and
    thousands of stored cards and feedback items would otherwise spend most of the run waiting on disk."""
    if not os.path.isdir("/dev/shm"):
        yield str(tmp_path_factory.mktemp("fuzz"))
        return
    folder = tempfile.mkdtemp(prefix="cds-plugin-fuzz-", dir="/dev/shm")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz_app(tiny_model, data_dir):
    settings = Settings.load(
        environ={},
        data_dir=data_dir,
        jwt_required=False,
        model_path=str(tiny_model),
        fhir_fetch_budget_s=1.0,
        background_max_pending=0,  # no integrated gradients queued after responses: the pages compute them
    )
    app = create_app(settings)
    http = app.extensions["cds_plugin"].http
    http.mount("http://", NoNetwork())
    http.mount("https://", NoNetwork())
    return app


def _documented_operations() -> list[str]:
    """The labels (`POST /cds-services/order-select-review`) of the clinical app's documented operations."""
    from cds_plugin.hooks.registry import ServiceRegistry
    from cds_plugin.services import considerations
    from cds_plugin.web.openapi import build_openapi

    registry = ServiceRegistry()
    considerations.register(registry)
    document = build_openapi(registry, metrics=True)
    return [f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item]


OPERATIONS = _documented_operations()


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    config = SchemathesisConfig.from_dict(
        {
            # jwt_required is off here: the fuzzer must not count a call without a JWT as wrongly accepted
            "generation": {"with-security-parameters": False},
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        }
    )
    document = fuzz_app.test_client().get("/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(_closed(document), config=config)
    schema.app = fuzz_app  # calls go to the app in-process (WSGI), as with from_wsgi
    return schema


def _closed(node):
    """The document with `additionalProperties: true` made false, for generation only.

    The wire models keep unknown members (CDS Hooks allows extensions), so the document says so; but
    generating arbitrary extra members at every level triples the cost of a case, and a body whose only
    fault is an extra member is not counted as wrongly accepted by schemathesis.
    """
    if isinstance(node, dict):
        return {
            k: False if k == "additionalProperties" and v is True else _closed(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


@pytest.fixture(scope="module")
def caller():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuzz-call")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


#: Undeclared query parameters and headers, sent with every case: operations without parameters get
#: distinct calls too, and the app must ignore what it does not know.
_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12
)
NOISE_QUERY = st.dictionaries(_TOKEN.filter(lambda k: k != "token"), st.text(max_size=30), max_size=3)
_HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
NOISE_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Accept": st.sampled_from(
            ["*/*", "application/json", "text/html", "application/fhir+json", "x/y;q=0"]
        )
        | _HEADER_VALUE,
        "X-Fuzz": _HEADER_VALUE,
        "Origin": st.sampled_from(["https://ehr.example.org", "null"]),
    },
)


def _with_noise(case, query, headers):
    if query:
        case.query = {**query, **(case.query or {})}
    if headers:
        case.headers = {**headers, **(case.headers or {})}
    return case


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_get_documented_answers(api_schema, caller, label):
    operation = api_schema.find_operation_by_label(label)
    if operation is None:
        pytest.skip(f"{label} is not served by this app (e.g. /metrics switched off)")
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )
    strategy = st.builds(_with_noise, cases, NOISE_QUERY, NOISE_HEADERS)
    calls = 0

    @given(case=strategy)
    @seed(FUZZ_SEED)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=FUZZ_SEED == 0,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],  # no shrinking: CI time
    )
    def fuzz(case):
        nonlocal calls
        future = caller.submit(case.call)
        try:
            response = future.result(timeout=PER_CALL_S)
        except FutureTimeout:
            pytest.fail(f"{label}: no answer within {PER_CALL_S} s (hang)")
        calls += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()
    assert calls >= FUZZ_EXAMPLES, f"{label}: only {calls} generated calls"


# --- arbitrary JSON bodies through the HTTP layer ----------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
VALID = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/example", "patientId": "example"},
    "prefetch": {
        "patient": {"resourceType": "Patient", "id": "example", "gender": "male", "birthDate": "1960-05-01"},
        "conditions": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Condition",
                        "id": "c1",
                        "subject": {"reference": "Patient/example"},
                        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                        "onsetDateTime": "2015-01-01",
                    }
                }
            ],
        },
    },
}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


VALID_PATHS = list(_paths(VALID))


@st.composite
def mutated_requests(draw):
    """A valid patient-view request with one to three elements replaced by arbitrary JSON."""
    body = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS))
        value = draw(JSON_VALUES)
        if not path:
            return value
        node = body
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    return body


@pytest.mark.parametrize("service", ["diagnosis-considerations", "order-select-review"])
def test_any_json_body_gets_cards_or_an_operation_outcome(fuzz_app, service):
    client = fuzz_app.test_client()

    @given(body=st.one_of(JSON_VALUES, mutated_requests()))
    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    def check(body):
        resp = client.post(f"/cds-services/{service}", json=body)
        assert resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.status_code == 200:
            assert isinstance(resp.get_json()["cards"], list)
        else:
            assert resp.mimetype == "application/fhir+json"
            assert resp.get_json()["resourceType"] == "OperationOutcome"

    check()
