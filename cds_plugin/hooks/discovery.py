"""CDS Hooks discovery response: the services this server offers."""

from __future__ import annotations

from pydantic import Field

from cds_plugin.hooks.wire import WireModel


class ServiceDescriptor(WireModel):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class DiscoveryResponse(WireModel):
    services: list[ServiceDescriptor] = Field(default_factory=list)

    def to_json(self) -> dict:
        body = super().to_json()
        body.setdefault("services", [])  # an empty list of services is still a valid, meaningful answer
        return body
