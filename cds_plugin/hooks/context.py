"""Per-hook `context` models for the hooks of the CDS Hooks library (HL7/cds-hooks-library).

Each model states its required fields and their formats; `PRIMITIVE_FIELDS` (root-level primitive
fields) are the only context fields a prefetch template may use as tokens.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

from cds_plugin.hooks.wire import WireModel

FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
# ord-1: "{type}/{id}"
LocalReference = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+/[A-Za-z0-9_\-.]{1,64}$")]


def _bundle(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Bundle":
        raise ValueError("must be a FHIR Bundle (resourceType 'Bundle')")
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        raise ValueError("Bundle.entry must be an array")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource", {}), dict):
            raise ValueError(f"Bundle.entry[{i}] must be an object with a resource")
    return value


def _task(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Task":
        raise ValueError("must be a FHIR Task")
    return value


def _resource_schema(resource_type: str, **properties: Any) -> WithJsonSchema:
    """The JSON Schema published for a resource-valued field (/openapi.json): what the validator checks."""
    return WithJsonSchema(
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {"resourceType": {"const": resource_type}, **properties},
            "additionalProperties": True,
        }
    )


_ENTRY = {
    "type": "object",
    "properties": {
        "resource": {"type": "object", "required": ["resourceType"], "additionalProperties": True}
    },
    "additionalProperties": True,
}
Bundle = Annotated[
    dict[str, Any],
    AfterValidator(_bundle),
    _resource_schema("Bundle", entry={"type": "array", "items": _ENTRY}),
]
Task = Annotated[dict[str, Any], AfterValidator(_task), _resource_schema("Task")]


def _user_of(*types: str):  # type: ignore[no-untyped-def]
    def check(value: str) -> str:
        if value.split("/", 1)[0] not in types:
            raise ValueError(f"must reference one of {', '.join(types)}")
        return value

    schema = {"type": "string", "pattern": rf"^({'|'.join(types)})/[A-Za-z0-9_\-.]{{1,64}}$"}
    return Annotated[LocalReference, AfterValidator(check), WithJsonSchema(schema)]


class HookContext(WireModel):
    """Base of hook contexts. Subclasses list the root-level primitive fields usable as prefetch tokens."""

    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset()


_CLINICIAN = ("Practitioner", "PractitionerRole")
_ANY_USER = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
ClinicianReference = _user_of(*_CLINICIAN)
UserReference = _user_of(*_ANY_USER)


class PatientViewContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})
    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


class OrderSelectContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})
    userId: ClinicianReference
    patientId: FhirId
    encounterId: FhirId | None = None
    selections: list[LocalReference] = Field(min_length=1)
    draftOrders: Bundle


class OrderSignContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})
    userId: ClinicianReference
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: Bundle


class OrderDispatchContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"patientId", "performer"})
    patientId: FhirId
    dispatchedOrders: list[LocalReference] = Field(min_length=1)
    performer: LocalReference
    fulfillmentTasks: list[Task] | None = None


class EncounterStartContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})
    userId: ClinicianReference
    patientId: FhirId
    encounterId: FhirId


class EncounterDischargeContext(EncounterStartContext):
    pass


class AppointmentBookContext(HookContext):
    PRIMITIVE_FIELDS: ClassVar[frozenset[str]] = frozenset({"userId", "patientId", "encounterId"})
    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None
    appointments: Bundle


HOOK_CONTEXTS: dict[str, type[HookContext]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
    "order-dispatch": OrderDispatchContext,
    "encounter-start": EncounterStartContext,
    "encounter-discharge": EncounterDischargeContext,
    "appointment-book": AppointmentBookContext,
}
