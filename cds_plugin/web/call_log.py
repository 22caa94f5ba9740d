"""One structured (JSON) log line per call: what an operator needs, never patient data nor tokens."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("cds_plugin.calls")


def log_call(**fields: Any) -> None:
    """Fields: event, service, hook, hookInstance, status, latency_ms, cards, model_version, reason, and
    what the handler adds (the clinical services: input resources, read, unread by reason, clinical
    facts, and why no considerations were given)."""
    log.info(json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True))
