"""CDS Hooks Card and the objects it carries: Source, Suggestion, Action, Link, override reasons.

The validators enforce the response invariants of CDS Hooks 2.0 (cds-resp-1..6), so a card that breaks
the spec cannot be built by a service in the first place. Optional booleans (`Suggestion.isRecommended`,
`Link.autolaunchable`) are left out when None; the clinical cards set them explicitly (False), since some
clients' models require them.
"""

from __future__ import annotations

import uuid as uuid_lib
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.wire import WireModel

SUMMARY_MAX = 140


def new_uuid() -> str:
    return str(uuid_lib.uuid4())


def _absolute_url(value: str | None) -> str | None:
    """Source.url, Source.icon and Link.url are absolute URLs (req 107, 111, 139)."""
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
    return value


AbsoluteUrl = Annotated[str, AfterValidator(_absolute_url)]


class Source(WireModel):
    label: str = Field(min_length=1)
    url: AbsoluteUrl | None = None
    icon: AbsoluteUrl | None = None
    topic: Coding | None = None


class Action(WireModel):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _resource_for_type(self) -> Action:
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.resource is not None and not isinstance(self.resource.get("resourceType"), str):
            raise ValueError("an action's resource must be a FHIR resource (with a resourceType)")
        if self.type == "delete" and (not self.resourceId or self.resource):
            raise ValueError("a delete action needs a resourceId and no resource (cds-resp-2)")
        return self


class Suggestion(WireModel):
    label: str = Field(min_length=1)
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(WireModel):
    label: str = Field(min_length=1)
    url: AbsoluteUrl
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    #: CDS Hooks 2.0 spells it all lower case; optional, but some clients' models require it
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on smart links (cds-resp-3)")
        return self


class Card(WireModel):
    uuid: str | None = None
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX - 1)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @field_validator("overrideReasons")
    @classmethod
    def _reasons_have_display(cls, reasons: list[Coding] | None) -> list[Coding] | None:
        for reason in reasons or []:
            if not reason.display:
                raise ValueError("every override reason needs a display (cds-resp-4)")
        return reasons

    def ensure_uuids(self) -> None:
        """Give the card and its suggestions a uuid where they have none, so feedback can name them."""
        self.uuid = self.uuid or new_uuid()
        for suggestion in self.suggestions or []:
            suggestion.uuid = suggestion.uuid or new_uuid()

    @model_validator(mode="after")
    def _selection_behavior(self) -> Card:
        if self.suggestions and not self.selectionBehavior:
            raise ValueError("cards with suggestions need a selectionBehavior (cds-resp-6)")
        if self.selectionBehavior == "at-most-one" and self.suggestions:
            if sum(1 for s in self.suggestions if s.isRecommended) > 1:
                raise ValueError("at-most-one allows a single recommended suggestion (cds-resp-1)")
        return self
