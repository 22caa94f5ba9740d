"""Explanation methods by name, so the API, the CLI and the evaluation pick them the same way.

A method is a function `(ExplainInput, targets, settings) -> list[Explanation]` (one per target, in
order) registered with its default settings; callers override settings by keyword. Registering a new
method is all it takes to make it available to `Engine.explain`, the CLI and `evaluate-explanations`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cds_plugin.explain.explanation import ExplanationError

if TYPE_CHECKING:
    from cds_plugin.explain.explanation import Explanation
    from cds_plugin.explain.inputs import ExplainInput, Target

MethodFunction = Callable[["ExplainInput", Sequence["Target"], Mapping[str, Any]], list["Explanation"]]


@dataclass(frozen=True)
class Method:
    """A registered method: `label_specific` False means the same scores for every target."""

    name: str
    run: MethodFunction
    description: str
    label_specific: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def settings(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated by `overrides`; an unknown setting is an error, not silently ignored."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ExplanationError(f"{self.name}: unknown setting(s) {', '.join(unknown)}; known: {known}")
        return {**self.defaults, **overrides}


_METHODS: dict[str, Method] = {}


def register(
    name: str, *, description: str, label_specific: bool, defaults: Mapping[str, Any] | None = None
) -> Callable[[MethodFunction], MethodFunction]:
    """Decorator adding a method under `name` (a later registration under the same name replaces it)."""

    def add(run: MethodFunction) -> MethodFunction:
        _METHODS[name] = Method(name, run, description, label_specific, dict(defaults or {}))
        return run

    return add


def get(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ExplanationError(
            f"unknown explanation method {name!r}; known: {', '.join(sorted(_METHODS))}"
        ) from None


def methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)
