"""Slow: every training bundle reads without error (run with `pytest -m slow`)."""

from __future__ import annotations

import gzip
import json

import pytest

from cds_plugin.fhir import linearize, read_record
from tests.fhir.conftest import TRAIN, input_names

pytestmark = pytest.mark.slow


def _bundles() -> list:
    if not TRAIN.is_dir():
        pytest.skip(f"training data not found at {TRAIN} (set CDS_PLUGIN_TRAIN_DATA)")
    files = sorted(TRAIN.rglob("*.json.gz"))
    if not files:
        pytest.skip(f"no *.json.gz under {TRAIN}")
    return files


def test_every_training_bundle_reads() -> None:
    files = _bundles()
    for path in files:
        record = read_record(path)
        assert record.issues == (), path.name
        assert record.conditions or record.observations, path.name
        lin = linearize(record)
        assert lin.segments[0].resource_type == "Patient"
        assert all(not f.reference.startswith("urn:") for f in record.facts()), path.name


def test_provenance_and_full_validation_on_a_sample() -> None:
    files = _bundles()
    for path in files[:: max(1, len(files) // 25)]:
        data = json.loads(gzip.open(path).read())
        record = read_record(data, validation="full")
        assert record.issues == (), path.name
        assert record.references() <= input_names(data), path.name
        fast = read_record(data, as_of=record.data_until)
        full = read_record(data, as_of=record.data_until, validation="full")
        assert fast == full, path.name
