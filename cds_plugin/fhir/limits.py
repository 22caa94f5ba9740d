"""Input limits and bounded JSON loading.

FHIR input arrives from outside (request bodies, files an operator points us at), so every reader
checks size, entry count and nesting before doing work proportional to them, and reports a breach as
`InputLimitError` (HTTP 413) rather than exhausting memory or the stack.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

from cds_plugin.errors import FhirInputError, InputLimitError

MiB = 1024 * 1024

#: Defaults: a Synthea bundle of a long, multi-morbid life is about 4 MiB and 1,300 entries.
DEFAULT_MAX_BYTES = 50 * MiB
DEFAULT_MAX_ENTRIES = 20_000
DEFAULT_MAX_DEPTH = 32

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-input limits.

    `max_bytes` bounds the JSON text of one input (after gunzip; for NDJSON, one line), `max_entries` the
    resources of one input (Bundle entries and prefetch values counted together), `max_depth` the nesting
    of Bundles in Bundles and, with full validation, the JSON nesting of each validated resource (the
    fast reads only look at fixed paths, and JSON text nested beyond Python's parser limit is refused).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_depth: int = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_entries", "max_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer")


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; FHIR JSON does not.
    raise FhirInputError(f"JSON: {name} is not allowed in FHIR JSON", expression="$")


def loads(data: bytes | str, limits: Limits, *, what: str = "input") -> Any:
    """Parse JSON text (gzip-compressed bytes accepted) within the byte and nesting limits."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data)
        if data[:2] == _GZIP_MAGIC:
            data = gunzip(data, limits, what=what)
        if len(data) > limits.max_bytes:
            raise _too_big(what, limits)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FhirInputError(f"{what}: not UTF-8 text (byte {exc.start})", expression="$") from exc
    else:
        text = data
        # A str is at most 4 bytes per character; only count exactly when it could matter.
        if len(text) * 4 > limits.max_bytes and len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
            raise _too_big(what, limits)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InputLimitError(
            f"{what}: JSON nested deeper than {limits.max_depth} levels", expression="$"
        ) from exc
    except json.JSONDecodeError as exc:
        raise FhirInputError(
            f"{what}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", expression="$"
        ) from exc


def gunzip(data: bytes, limits: Limits, *, what: str = "input") -> bytes:
    """Decompress gzip data, stopping as soon as the output passes `max_bytes` (gzip bombs)."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    try:
        chunk = decomp.decompress(data, limits.max_bytes + 1)
        out += chunk
        while decomp.unconsumed_tail and len(out) <= limits.max_bytes:
            out += decomp.decompress(decomp.unconsumed_tail, limits.max_bytes + 1 - len(out))
        if len(out) <= limits.max_bytes:
            out += decomp.flush()
    except zlib.error as exc:
        raise FhirInputError(f"{what}: not valid gzip data", expression="$") from exc
    if len(out) > limits.max_bytes:
        raise _too_big(what, limits)
    return bytes(out)


def check_depth(value: Any, limits: Limits, *, base_depth: int = 0, label: str, expression: str) -> None:
    """Raise InputLimitError when `value` nests containers deeper than the limit allows.

    Iterative, so a hostile input cannot overflow the interpreter stack here.
    """
    limit = limits.max_depth - base_depth
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise InputLimitError(
                f"{label}: JSON nested deeper than {limits.max_depth} levels", expression=expression
            )
        children = node.values() if type(node) is dict else node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, depth + 1))


def is_finite_number(value: Any) -> bool:
    """A JSON number: int or float, not bool, not NaN/inf."""
    kind = type(value)
    if kind is int:
        return True
    return kind is float and math.isfinite(value)


def _too_big(what: str, limits: Limits) -> InputLimitError:
    return InputLimitError(f"{what}: larger than {limits.max_bytes} bytes", expression="$")
