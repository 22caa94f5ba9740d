"""CDS Hooks feedback body: what the client reports about cards the user acted on (cds-fb-1..3)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.wire import WireModel

# RFC 3339 section 5.6 date-time: full date, time, fraction optional, offset Z or +hh:mm required
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class AcceptedSuggestion(WireModel):
    id: str = Field(min_length=1)


class OverrideReason(WireModel):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _reason_or_comment(self) -> OverrideReason:
        if self.reason is None and not self.userComment:
            raise ValueError("overrideReason needs a reason, a userComment, or both (cds-fb-3)")
        return self


class FeedbackItem(WireModel):
    card: str = Field(min_length=1, max_length=64)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str

    @field_validator("outcomeTimestamp")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if not RFC3339.match(value):
            raise ValueError("must be an RFC 3339 date-time with offset, e.g. 2026-01-31T10:00:00Z")
        try:
            # stored in UTC: an instant that has no UTC date-time (year 1 or 9999 with an offset) is refused
            datetime.fromisoformat(value.replace("z", "Z").replace("t", "T")).astimezone(UTC)
        except ValueError as exc:
            raise ValueError(f"not a valid date-time: {exc}") from exc
        except OverflowError as exc:
            raise ValueError("not a date-time that can be expressed in UTC") from exc
        return value

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an accepted outcome needs acceptedSuggestions (cds-fb-2)")
        return self

    @property
    def timestamp(self) -> datetime:
        return datetime.fromisoformat(self.outcomeTimestamp.replace("z", "Z").replace("t", "T"))


class FeedbackRequest(WireModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=1000)
