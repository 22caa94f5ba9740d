"""CDS Hooks service response: cards and system actions."""

from __future__ import annotations

from pydantic import Field

from cds_plugin.hooks.card import Action, Card
from cds_plugin.hooks.wire import WireModel


class CDSResponse(WireModel):
    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] | None = None

    def ensure_uuids(self) -> None:
        for card in self.cards:
            card.ensure_uuids()
