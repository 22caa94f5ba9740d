"""Optional full validation of each used resource against the fhir.resources R4B models.

The default (`validation="fast"`) checks only the elements the record reads (elements.py): about 10x
faster than validating the whole Bundle, which matters for training over the corpus and for hook
latency. `validation="full"` additionally validates every resource of a used type with its R4B pydantic
model, for data of unknown quality. R4B, not the package's default R5 models: the R4 data we receive
validates against R4B and is rejected by R5.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from typing import Any

from cds_plugin.fhir.elements import ElementError

VALIDATION_MODES = ("fast", "full")

_REGEX_MISMATCH = re.compile(r"Value error, (\w+) value string does not match spec regex")

_PROBLEMS = {
    "missing": "required element missing",
    "extra_forbidden": "not an element of this resource type",
    "float_parsing": "not a number",
    "float_type": "not a number",
    "decimal_parsing": "not a number",
    "decimal_type": "not a number",
    "int_parsing": "not an integer",
    "int_type": "not an integer",
    "string_type": "not a string",
    "bool_type": "not a boolean",
    "bool_parsing": "not a boolean",
    "list_type": "not an array",
    "dict_type": "not an object",
    "model_type": "not an object",
    "model_attributes_type": "not an object",
    "string_pattern_mismatch": "does not match the FHIR format",
    "date_from_datetime_parsing": "not a FHIR date",
    "date_parsing": "not a FHIR date",
    "datetime_parsing": "not a FHIR dateTime",
    "datetime_from_date_parsing": "not a FHIR dateTime",
    "enum": "not an allowed code",
    "literal_error": "not an allowed value",
    "value_error": "invalid value",
}


@cache
def _model(resource_type: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def validate_full(resource: dict) -> None:
    """Validate with the R4B model; raise ElementError naming the first bad element (never its value)."""
    from pydantic import ValidationError

    try:
        _model(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0] if errors else {"loc": (), "type": "value_error"}
        path = _path(first.get("loc", ()))
        raise ElementError(path or "(resource)", _describe(first)) from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        # fhir.resources' own root validators raise plain errors for some malformed input.
        raise ElementError("(resource)", "does not validate against FHIR R4B") from None


def _describe(error: Any) -> str:
    # Only fixed wording: pydantic messages may quote the offending value.
    kind = error.get("type", "")
    if kind == "value_error":
        match = _REGEX_MISMATCH.match(str(error.get("msg", "")))
        if match:
            return f"not a valid FHIR {match.group(1)}"
    return _PROBLEMS.get(kind, "invalid")


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if text.endswith("__ext"):  # fhir.resources' primitive-extension aliases
                text = "_" + text[: -len("__ext")]
            out += ("." if out else "") + text
    return out
