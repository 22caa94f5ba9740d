"""The request models on arbitrary JSON: each value either validates or raises pydantic's
ValidationError (which the web layer turns into a 400 OperationOutcome), never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cds_plugin.hooks.context import HOOK_CONTEXTS
from cds_plugin.hooks.feedback import FeedbackRequest
from cds_plugin.hooks.request import CDSRequest

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)

#: Field names the models know, so generated objects hit the validators, not only "missing field".
KNOWN = [
    "hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch", "extension",
    "access_token", "token_type", "expires_in", "scope", "subject", "patient",
    "userId", "patientId", "encounterId", "selections", "draftOrders", "dispatchedOrders", "performer",
    "fulfillmentTasks", "appointments", "resourceType", "entry", "resource",
    "feedback", "card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp", "id",
    "reason", "userComment", "code", "system", "display",
]  # fmt: skip
PLAUSIBLE = (
    st.sampled_from(
        [
            "patient-view",
            "Practitioner/x",
            "Patient/1",
            "Bundle",
            "Task",
            "Bearer",
            "accepted",
            "overridden",
            "2026-01-31T10:00:00Z",
            "2026-02-30T10:00:00+01:00",
            "p1",
        ]
    )
    | SCALARS
)
SHAPED = st.recursive(
    PLAUSIBLE,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
ANY = JSON | SHAPED

MODELS = [CDSRequest, FeedbackRequest, *HOOK_CONTEXTS.values()]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_arbitrary_json_validates_or_raises_validation_error(model):
    @FUZZ
    @given(value=ANY)
    def check(value):
        try:
            parsed = model.model_validate(value)
        except ValidationError:
            return
        # what validated serializes back to JSON
        json.dumps(parsed.model_dump(mode="json"))

    check()


@FUZZ
@given(
    value=st.fixed_dictionaries(
        {"hook": st.sampled_from(sorted(HOOK_CONTEXTS)), "hookInstance": st.text(min_size=1, max_size=5)},
        optional={
            "context": SHAPED,
            "prefetch": SHAPED,
            "fhirServer": PLAUSIBLE,
            "fhirAuthorization": SHAPED,
        },
    )
)
def test_nearly_valid_requests_and_their_contexts(value):
    try:
        call = CDSRequest.model_validate(value)
    except ValidationError:
        return
    try:
        HOOK_CONTEXTS[call.hook].model_validate(call.context)
    except ValidationError:
        pass
