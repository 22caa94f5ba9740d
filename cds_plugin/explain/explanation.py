"""The one result type of every explanation method, and its versioned JSON form.

An Explanation answers "which of this patient's FHIR resources moved this consideration, and by how
much". It carries what is needed to judge it later without the model at hand: the model version, the
method and its exact settings, the target, the probability explained, and for additive methods the
two model outputs the scores must add up to (F(x) - F(baseline)) with the measured completeness error.
Scores per fact (one per model position) travel alongside the per-resource evidence so a viewer can
highlight the facts.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cds_plugin.errors import CdsPluginError

#: Version of the JSON layout below; `from_json` refuses other versions instead of misreading them.
FORMAT_VERSION = 2

#: `score_unit` values: additive scores in probability units, or a non-negative relevance.
PROBABILITY = "probability"
RELEVANCE = "relevance"


class ExplanationError(CdsPluginError):
    """An explanation that cannot be made or read (unknown method or target, bad settings or file)."""

    code = "invalid"


class ExplanationTimeout(ExplanationError):
    """The method could not finish inside the time budget it was given (`budget_s`); the caller answers
    with a cheaper method and completes this one later."""

    code = "timeout"


@dataclass(frozen=True)
class ExplainedTarget:
    """The consideration explained: a label of the model."""

    code: str
    system: str
    display: str
    kind: str  # "diagnosis" | "treatment"


@dataclass(frozen=True)
class Evidence:
    """One FHIR resource of the input and what it contributed.

    `reference` is `ResourceType/id` exactly as the input names it. `score` is signed for additive
    methods (probability units: + pushed the probability up) and non-negative for relevance methods.
    `share` is |score| over the sum of |score| of all evidence, so shares of one explanation add to 1.
    """

    reference: str
    resource_type: str
    display: str
    score: float
    share: float


@dataclass(frozen=True)
class FactScore:
    """One fact (linearization segment, one model position) with its score."""

    segment: int
    reference: str
    path: str
    text: str
    score: float


@dataclass
class Explanation:
    """Why the model rated one target as it did for one patient input (see the module docstring)."""

    model_version: str
    method: str
    settings: dict[str, Any]
    target: ExplainedTarget
    probability: float
    label_specific: bool
    score_unit: str
    evidence: list[Evidence]
    facts: list[FactScore] = field(default_factory=list)
    f_x: float | None = None
    f_baseline: float | None = None
    completeness_error: float | None = None
    reference_time: str | None = None
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    format_version: int = FORMAT_VERSION

    def top(self, n: int = 5) -> list[Evidence]:
        """The n resources with the largest |score| (evidence is kept sorted that way)."""
        return self.evidence[:n]

    @property
    def references(self) -> list[str]:
        return [e.reference for e in self.evidence]

    def to_json(self) -> dict[str, Any]:
        """The JSON form (what `asdict` gives, built directly: asdict deep-copies every fact score and
        cost tens of milliseconds per card in the hook call)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["settings"] = copy.deepcopy(self.settings)
        data["target"] = asdict(self.target)
        data["evidence"] = [
            {"reference": e.reference, "resource_type": e.resource_type, "display": e.display,
             "score": e.score, "share": e.share}
            for e in self.evidence
        ]  # fmt: skip
        data["facts"] = [
            {"segment": f.segment, "reference": f.reference, "path": f.path, "text": f.text, "score": f.score}
            for f in self.facts
        ]
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Explanation:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ExplanationError(f"explanation format {version!r} is not {FORMAT_VERSION}")
        try:
            values = dict(data)
            values["target"] = ExplainedTarget(**data["target"])
            values["evidence"] = [Evidence(**e) for e in data["evidence"]]
            values["facts"] = [FactScore(**f) for f in data.get("facts", [])]
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ExplanationError(f"not an explanation: {exc}") from exc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls, text: str) -> Explanation:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExplanationError(f"not JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise ExplanationError("not an explanation: a JSON object is expected")
        return cls.from_json(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        return cls.loads(Path(path).read_text())
