"""Registering CDS services by id: each declares its hook, prefetch templates and handler in one place.

    registry = ServiceRegistry()

    @registry.service("bmi-check", hook="patient-view", title="BMI", description="...",
                      prefetch={"patient": "Patient/{{context.patientId}}"})
    def bmi_check(call: HookCall) -> CDSResponse: ...

Several services may share a hook; ids are unique (a service id is the last segment of its URL, so one id
serves one hook). Templates are checked by `validate()`, which the app
factory calls at start-up so an invalid template stops the service with a clear message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_plugin.hooks.context import HOOK_CONTEXTS, HookContext
from cds_plugin.hooks.discovery import DiscoveryResponse, ServiceDescriptor
from cds_plugin.hooks.prefetch import PrefetchTemplateError, check_template
from cds_plugin.hooks.request import CDSRequest
from cds_plugin.hooks.response import CDSResponse

SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]{0,99}$")


class ServiceConfigurationError(ValueError):
    """A service was registered in a way the spec or this registry does not allow."""


@dataclass
class HookCall:
    """Everything a handler needs for one call; `model_version` and `log_fields` are set by the handler
    for the call log."""

    service: Service
    request: CDSRequest
    context: HookContext
    prefetch: dict[str, Any]
    prefetch_sources: dict[str, str]
    model_version: str | None = None
    #: The service's public base URL (for absolute links in cards), e.g. https://cds.example.org
    base_url: str | None = None
    #: Extra fields the handler adds to the call's log line: counts and fixed words only, never PHI
    log_fields: dict[str, Any] = field(default_factory=dict)
    #: The patient's pseudonym (cds_plugin.storage.pseudonym) when the context names a patient
    patient_key: str | None = None

    @property
    def hook_instance(self) -> str:
        return self.request.hookInstance


Handler = Callable[[HookCall], CDSResponse]


@dataclass
class Service:
    id: str
    hook: str
    description: str
    handler: Handler
    title: str | None = None
    prefetch: dict[str, str] = field(default_factory=dict)
    optional_prefetch: frozenset[str] = frozenset()
    usage_requirements: str | None = None
    #: Loads heavy objects (a model) once per worker; its result is kept in `state`.
    load: Callable[[], Any] | None = None
    context_model: type[HookContext] | None = None
    state: Any = None
    loaded: bool = False

    @property
    def required_prefetch(self) -> frozenset[str]:
        return frozenset(self.prefetch) - self.optional_prefetch

    @property
    def context_type(self) -> type[HookContext]:
        model = self.context_model or HOOK_CONTEXTS.get(self.hook)
        if model is None:
            raise ServiceConfigurationError(
                f"service {self.id!r}: hook {self.hook!r} is not a known hook; pass context_model="
            )
        return model

    def descriptor(self) -> ServiceDescriptor:
        return ServiceDescriptor(
            hook=self.hook,
            title=self.title,
            description=self.description,
            id=self.id,
            prefetch=dict(self.prefetch) or None,
            usageRequirements=self.usage_requirements,
        )

    def ensure_loaded(self) -> None:
        if not self.loaded:
            self.state = self.load() if self.load else None
            self.loaded = True


class ServiceRegistry:
    """An ordered set of services, one per id.

    The id is the last segment of the service's URL (`{base}/cds-services/{id}`), so it names exactly one
    discovery entry and one hook: a service that follows the workflow (order-select, then order-sign)
    registers one id per hook (`order-select-review`, `order-sign-review`). A call whose `hook` is not
    its service's hook is refused.
    """

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}

    def add(self, service: Service) -> Service:
        if not SERVICE_ID.match(service.id):
            raise ServiceConfigurationError(f"service id {service.id!r} is not URL-safe")
        if service.id in self._services:
            raise ServiceConfigurationError(
                f"service id {service.id!r} is registered twice (on {self._services[service.id].hook!r} "
                f"and {service.hook!r}); ids are the last segment of the service URL and must be unique"
            )
        if not service.description:
            raise ServiceConfigurationError(f"service {service.id!r}: a description is required")
        unknown_optional = service.optional_prefetch - set(service.prefetch)
        if unknown_optional:
            raise ServiceConfigurationError(
                f"service {service.id!r}: optional_prefetch names unknown keys {sorted(unknown_optional)}"
            )
        self._services[service.id] = service
        return service

    def service(
        self,
        id: str,
        *,
        hook: str,
        description: str,
        title: str | None = None,
        prefetch: Mapping[str, str] | None = None,
        optional_prefetch: set[str] | frozenset[str] = frozenset(),
        usage_requirements: str | None = None,
        load: Callable[[], Any] | None = None,
        context_model: type[HookContext] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering `handler` as service `id` on `hook`."""

        def register(handler: Handler) -> Handler:
            self.add(
                Service(
                    id=id,
                    hook=hook,
                    description=description,
                    handler=handler,
                    title=title,
                    prefetch=dict(prefetch or {}),
                    optional_prefetch=frozenset(optional_prefetch),
                    usage_requirements=usage_requirements,
                    load=load,
                    context_model=context_model,
                )
            )
            return handler

        return register

    def get(self, service_id: str, hook: str | None = None) -> Service | None:
        """The service `service_id` (None when it does not answer `hook`, if one is given)."""
        service = self._services.get(service_id)
        if service is None or (hook is not None and service.hook != hook):
            return None
        return service

    def hooks_of(self, service_id: str) -> list[str]:
        service = self._services.get(service_id)
        return [service.hook] if service is not None else []

    def __iter__(self) -> Iterator[Service]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def validate(self) -> None:
        """Check every service's hook and prefetch templates; raise with a message naming the culprit."""
        for service in self:
            context_model = service.context_type
            for key, template in service.prefetch.items():
                try:
                    check_template(service.id, key, template, context_model)
                except PrefetchTemplateError as exc:
                    raise ServiceConfigurationError(str(exc)) from exc

    def discovery(self) -> DiscoveryResponse:
        return DiscoveryResponse(services=[s.descriptor() for s in self])


#: The registry the product's clinical services register into (see cds_plugin.services).
default_registry = ServiceRegistry()
