"""`/model-card`: the model card of the model this service runs (linked from every card's source)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app

from cds_plugin.errors import NotFoundError

bp = Blueprint("model_card", __name__)


@bp.get("/model-card")
def model_card() -> Response:
    from cds_plugin.model.engine import default_model_path

    settings = current_app.extensions["cds_plugin"].settings
    folder = Path(settings.model_path) if settings.model_path else default_model_path()
    path = folder / "MODEL_CARD.md"
    if not path.is_file():
        raise NotFoundError("this model has no model card", expression="model-card")
    return Response(
        path.read_text(encoding="utf-8"), mimetype="text/plain", headers={"Cache-Control": "no-cache"}
    )
