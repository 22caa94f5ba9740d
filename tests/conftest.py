"""Shared fixtures: settings on a temporary database, a small registry of test services, the app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(os.environ.get("CDS_PLUGIN_SCHEMAS", ROOT.parent / "shared" / "cds-hooks-schemas"))


@pytest.fixture
def schemas_dir() -> Path:
    if not SCHEMAS.exists():
        pytest.skip(f"CDS Hooks schemas not found at {SCHEMAS}")
    return SCHEMAS
