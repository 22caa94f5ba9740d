"""The service as the service tests call it: JWT off, no probability or odds-ratio floor, no after-response
queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask


def open_app(model_path: str | Path, data_dir: str | Path, **overrides: Any) -> Flask:
    """An app on `model_path` keeping its files in `data_dir`; `overrides` are further settings, and
    replace these defaults where they name the same one.

    No floor under card probabilities or odds ratios, so a tiny model's cards show; integrated gradients
    are left to the page (background_max_pending=0), so no background job outlives a test.
    """
    from cds_plugin.settings import Settings
    from cds_plugin.web.app import create_app

    defaults: dict[str, Any] = {
        "min_card_probability": 0.0,
        "min_card_odds_ratio": 0.0,
        "background_max_pending": 0,
    }
    settings = Settings.load(
        environ={},
        data_dir=str(data_dir),
        jwt_required=False,
        model_path=str(model_path),
        **{**defaults, **overrides},
    )
    return create_app(settings)
