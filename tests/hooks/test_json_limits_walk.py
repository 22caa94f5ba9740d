"""The request limits walk: depth, string length and FHIR resource count, at their exact boundaries."""

from __future__ import annotations

import pytest

from cds_plugin.errors import InputLimitError
from cds_plugin.hooks.request_limits import RequestLimits, ResourceCounter, check_json


def nested(depth: int, leaf=None):
    """`depth` levels of lists (the outermost list is level 1), built without recursion."""
    value = [] if leaf is None else [leaf]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_at_the_limit_passes_one_more_fails():
    limits = RequestLimits(max_depth=10)
    assert check_json(nested(10), limits) == 0
    with pytest.raises(InputLimitError, match="nested deeper than 10 levels") as info:
        check_json(nested(11), limits)
    assert info.value.status == 413 and info.value.code == "too-costly"
    assert info.value.expression == "[0][0][0][0][0][0][0][0][0][0]"


def test_objects_count_as_levels_and_the_path_is_named():
    limits = RequestLimits(max_depth=3)
    check_json({"a": {"b": {"c": 1}}}, limits)
    with pytest.raises(InputLimitError) as info:
        check_json({"prefetch": {"p": {"resourceType": "Patient", "name": [{"given": ["x"]}]}}}, limits)
    assert info.value.expression == "prefetch.p.name"


def test_a_very_deep_value_does_not_overflow_the_stack():
    with pytest.raises(InputLimitError):
        check_json(nested(200_000), RequestLimits())


def test_long_paths_are_shortened():
    with pytest.raises(InputLimitError) as info:
        check_json(nested(100), RequestLimits(max_depth=64))
    assert info.value.expression.endswith(".…") and len(info.value.expression) < 60


@pytest.mark.parametrize(
    ("text", "ok"),
    [("a" * 100, True), ("a" * 101, False), ("é" * 50, True), ("é" * 50 + "a", False), ("😀" * 25, True)],
)
def test_string_limit_counts_utf8_bytes(text, ok):
    limits = RequestLimits(max_string_bytes=100)
    body = {"context": {"note": text}}
    if ok:
        check_json(body, limits)
    else:
        with pytest.raises(InputLimitError, match="a string is longer than 100 bytes") as info:
            check_json(body, limits)
        assert info.value.expression == "context.note"


def test_keys_and_top_level_strings_are_held_to_the_string_limit():
    limits = RequestLimits(max_string_bytes=10)
    with pytest.raises(InputLimitError, match="object key"):
        check_json({"k" * 11: 1}, limits)
    with pytest.raises(InputLimitError):
        check_json("s" * 11, limits)
    with pytest.raises(InputLimitError):
        check_json([["s" * 11]], limits)


def test_message_never_quotes_the_input():
    secret = "Jane Doe " * 20
    with pytest.raises(InputLimitError) as info:
        check_json({"name": secret}, RequestLimits(max_string_bytes=50))
    assert "Jane" not in info.value.message


def bundle(n: int) -> dict:
    return {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Observation", "id": str(i)}} for i in range(n)],
    }


def test_resources_are_counted_bundles_included():
    limits = RequestLimits(max_entries=10)
    assert check_json({"prefetch": {"obs": bundle(9)}}, limits) == 10
    with pytest.raises(InputLimitError, match="more than 10 FHIR resources"):
        check_json({"prefetch": {"obs": bundle(10)}}, limits)


def test_a_counter_shares_the_budget_across_parts_of_one_call():
    counter = ResourceCounter(RequestLimits(max_entries=10))
    check_json({"prefetch": {"obs": bundle(5)}}, counter.limits, counter=counter)  # 6
    check_json(bundle(3), counter.limits, counter=counter, base="prefetch.conditions")  # 10
    with pytest.raises(InputLimitError) as info:
        check_json({"resourceType": "Patient"}, counter.limits, counter=counter, base="prefetch.patient")
    assert info.value.expression == "prefetch.patient"
    assert counter.count == 11


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(bad):
    with pytest.raises(ValueError):
        RequestLimits(max_depth=bad)
