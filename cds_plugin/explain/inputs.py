"""What every method starts from: one encoded patient input and the targets to explain on it.

The input is prepared once per `explain` call and shared by all its targets (and by every method run
on it): reading the FHIR, linearizing, tokenizing, and the forward pass of the unaltered input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cds_plugin.errors import NotFoundError
from cds_plugin.explain.explanation import ExplainedTarget, ExplanationError
from cds_plugin.model.assessment import Assessment, Consideration

if TYPE_CHECKING:
    from cds_plugin.fhir.linearize import Linearization
    from cds_plugin.fhir.record import PatientRecord
    from cds_plugin.model.engine import Engine
    from cds_plugin.model.tokenizer import EncodedInput


class UnknownTargetError(NotFoundError):
    """A target code that is not a label of the loaded model."""


@dataclass(frozen=True)
class Target:
    """A label of the model, by index, with what an Explanation shows of it."""

    label_index: int
    code: str
    system: str
    display: str
    kind: str

    def explained(self) -> ExplainedTarget:
        return ExplainedTarget(code=self.code, system=self.system, display=self.display, kind=self.kind)


@dataclass
class ExplainInput:
    """One patient input as the model sees it, with the provenance of every token."""

    engine: Engine
    linearization: Linearization
    encoded: EncodedInput
    record: PatientRecord | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def length(self) -> int:
        return len(self.encoded.input_ids)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask, shape (1, length)."""
        return self.engine.tokenizer.batch([self.encoded])

    @cached_property
    def token_segments(self) -> list[int | None]:
        """The linearization segment of every token position (None for [CLS] and [SEP])."""
        out: list[int | None] = [None] * self.length
        for start, end, segment in self.encoded.spans:
            out[start:end] = [segment] * (end - start)
        return out

    @cached_property
    def content_positions(self) -> np.ndarray:
        """Token positions that belong to a fact (everything but [CLS] and [SEP])."""
        return np.array([i for i, s in enumerate(self.token_segments) if s is not None], dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        """Calibrated probability of every label on the unaltered input: one forward for all targets
        (a method that runs that forward anyway stores its result with `share_probabilities`)."""
        cached = self.cache.get("probabilities")
        if cached is None:
            cached = self.engine.probabilities(self.engine.logits([self.encoded]))[0]
            self.cache["probabilities"] = cached
        return cached

    def share_probabilities(self, probabilities: np.ndarray) -> None:
        self.cache.setdefault("probabilities", np.asarray(probabilities, dtype=np.float64))

    @property
    def reference_time(self) -> str | None:
        when = self.linearization.reference_time
        return when.isoformat() if when is not None else None


def prepare(engine: Engine, source: Any, as_of: datetime | date | None = None) -> ExplainInput:
    """The input of `source`: an Assessment (its own input is reused), a PatientRecord or any FHIR input
    `Engine.record_of` reads, cut at `as_of` when given."""
    if isinstance(source, Assessment):
        if as_of is None and source.linearization is not None and source.encoded is not None:
            return ExplainInput(engine, source.linearization, source.encoded, source.record)
        if source.record is None:
            raise ExplanationError("this assessment kept no record to explain")
        source = source.record
    record = engine.record_of(source, as_of)
    encoded, lin = engine.encode(record)
    return ExplainInput(engine, lin, encoded, record)


def resolve_targets(engine: Engine, target: Any) -> tuple[list[Target], bool]:
    """Targets from a Consideration, a code (`code` or `kind:code`) or a list of them.

    Returns the targets and whether a single one was asked for (so the caller answers in kind).
    """
    single = isinstance(target, (str, Consideration))
    items: Sequence[Any] = [target] if single else list(target)
    if not items:
        raise ExplanationError("no target to explain")
    out = []
    for item in items:
        index = _label_index(engine, item)
        key = engine.labels.labels[index]
        out.append(Target(index, key.code, key.system, key.display, key.kind))
    return out, single


def _label_index(engine: Engine, item: Any) -> int:
    labels = engine.labels.labels
    if isinstance(item, Consideration):
        i = item.label_index
        if 0 <= i < len(labels) and labels[i].code == item.code and labels[i].kind == item.kind:
            return i
        item = f"{item.kind}:{item.code}"
    if not isinstance(item, str):
        raise ExplanationError(f"a target is a Consideration or a code, not {type(item).__name__}")
    matches = [i for i, key in enumerate(labels) if item in (key.code, key.id)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ExplanationError(f"code {item!r} names several labels; use kind:code")
    raise UnknownTargetError(f"{item!r} is not a label of model {engine.version}", expression="code")
