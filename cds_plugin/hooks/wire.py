"""Base of every CDS Hooks wire model: tolerant of unknown fields, and serialized without empties.

The spec (requirement 3) forbids null or empty JSON elements unless stated otherwise, so `to_json()`
drops None, empty strings, lists and objects recursively; `cards` is the one field kept when empty.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

#: Top-level fields whose empty value carries meaning and must be sent (`{"cards": []}`: no guidance).
KEEP_EMPTY = frozenset({"cards"})


def prune_empty(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    """Recursively remove None and empty containers/strings, except the top-level keys in `keep`."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            pruned = prune_empty(v)
            if pruned is None or (pruned in ("", [], {}) and k not in keep):
                continue
            out[k] = pruned
        return out
    if isinstance(value, list):
        items = [prune_empty(v) for v in value]
        return [v for v in items if v is not None and v not in ("", [], {})]
    return value


class WireModel(BaseModel):
    """Pydantic base for CDS Hooks objects: extra fields tolerated and kept, aliases used on the wire."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object to send: by alias, no nulls, no empties (but `cards: []`)."""
        return prune_empty(self.model_dump(mode="json", by_alias=True, exclude_none=True), KEEP_EMPTY)
