"""What one worker holds for its lifetime: settings, services, database stores, client trust, HTTP pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from cds_plugin.hooks.registry import ServiceRegistry
from cds_plugin.settings import Settings
from cds_plugin.storage.card_log import CardLog
from cds_plugin.storage.database import Database
from cds_plugin.storage.explanation_store import ExplanationStore
from cds_plugin.storage.feedback_store import FeedbackStore
from cds_plugin.storage.override_store import OverrideStore
from cds_plugin.storage.pseudonym import Pseudonymizer
from cds_plugin.web.link_tokens import LinkSigner


@dataclass
class Runtime:
    settings: Settings
    registry: ServiceRegistry
    db: Database
    feedback_store: FeedbackStore
    card_log: CardLog
    override_store: OverrideStore
    pseudonymizer: Pseudonymizer
    explanation_store: ExplanationStore
    link_signer: LinkSigner
    trust: Any  # ClientTrust, or None when JWT checks are switched off by setting
    http: requests.Session
