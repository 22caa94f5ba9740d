"""CDS Hooks Coding: a code from a code system, used for card topics and override reasons."""

from __future__ import annotations

from pydantic import Field

from cds_plugin.hooks.wire import WireModel


class Coding(WireModel):
    code: str = Field(min_length=1)
    system: str = Field(min_length=1)
    display: str | None = None
