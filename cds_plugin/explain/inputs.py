"""What every method starts from: one encoded patient input and the targets to explain on it.

The input is prepared once per `explain` call and shared by all its targets (and by every method run
on it): reading the FHIR, listing and encoding the facts, their embeddings, and the forward pass of the
unaltered input. Each model position is one fact (one linearization segment), so a method's score per
position is its score per fact.
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
    from cds_plugin.model.batch import FactBatch
    from cds_plugin.model.engine import Engine
    from cds_plugin.model.facts import EncodedFacts


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
    """One patient input as the model sees it, with the provenance of every position."""

    engine: Engine
    linearization: Linearization
    encoded: EncodedFacts
    record: PatientRecord | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def length(self) -> int:
        return len(self.encoded)

    def batch(self) -> FactBatch:
        """The input as a batch of one (cached: every method reads the same tensors)."""
        cached = self.cache.get("batch")
        if cached is None:
            cached = self.cache["batch"] = self.engine.batch([self.encoded])
        return cached

    def embeddings(self) -> torch.Tensor:
        """Fact embeddings (1, length, hidden) of the unaltered input, without gradient."""
        cached = self.cache.get("embeddings")
        if cached is None:
            with torch.no_grad():
                cached = self.engine.network.embed(**self.batch().embed_args())
            self.cache["embeddings"] = cached
        return cached

    @cached_property
    def position_segments(self) -> list[int]:
        """The linearization segment of every model position."""
        return [int(s) for s in self.encoded.segments]

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
    """Targets from a Consideration, a code (see `LabelSpace.find`) or a list of them.

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
    labels = engine.labels
    if isinstance(item, Consideration):
        i = item.label_index
        if 0 <= i < len(labels) and labels[i].code == item.code and labels[i].kind == item.kind:
            return i
        item = f"{item.kind}:{item.code}"
    if not isinstance(item, str):
        raise ExplanationError(f"a target is a Consideration or a code, not {type(item).__name__}")
    i = labels.find(item)
    if i is not None:
        return i
    raise UnknownTargetError(f"{item!r} is not a label of model {engine.version}", expression="code")
