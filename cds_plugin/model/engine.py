"""The Engine: load a trained model once, then assess patients (and explain, see cds_plugin.explain).

    from cds_plugin import Engine
    engine = Engine.load()                 # the default model shipped in the package
    assessment = engine.assess(bundle)     # any FHIR input cds_plugin.fhir reads, or a PatientRecord

Works without Flask; thread-safe for concurrent `assess` calls (inference only, no shared mutable state).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cds_plugin.fhir.reader import read_record
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.artifacts import LoadedModel, ModelLoadError, load_model
from cds_plugin.model.assessment import Assessment, Consideration
from cds_plugin.model.concepts import DIAGNOSIS
from cds_plugin.model.dataset import encode_record
from cds_plugin.model.task import documented_concepts

if TYPE_CHECKING:
    from cds_plugin.explain.explanation import Explanation

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


def default_model_path() -> Path:
    return DEFAULT_MODEL_DIR


class Engine:
    """A loaded model with the operations the services need: assess, assess_many, explain."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.network = model.network
        self.tokenizer = model.tokenizer
        self.labels = model.labels
        self.version = model.version

    @classmethod
    def load(cls, path: str | Path | None = None) -> Engine:
        """Load a model folder; without a path, the default model shipped in the package."""
        folder = Path(path) if path is not None else default_model_path()
        if path is None and not folder.exists():
            raise ModelLoadError(
                f"the default model is missing from the package ({folder}); reinstall cds-plugin"
            )
        return cls(load_model(folder))

    # --- input --------------------------------------------------------------------------------------

    def record_of(self, source: Any, as_of: datetime | date | None = None) -> PatientRecord:
        """A PatientRecord from any accepted FHIR input, cut at `as_of` when given."""
        if isinstance(source, PatientRecord):
            return source.as_of(as_of) if as_of is not None else source
        return read_record(source, as_of=as_of)

    def encode(self, record: PatientRecord):  # type: ignore[no-untyped-def]
        return encode_record(record, self.tokenizer, self.model.max_length, self.model.fact_style)

    # --- predictions --------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, encoded: Sequence) -> np.ndarray:  # type: ignore[type-arg]
        ids, mask = self.tokenizer.batch(list(encoded))
        return self.network(ids, mask).numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits / self.model.temperature))

    def assess(self, source: Any, as_of: datetime | date | None = None) -> Assessment:
        """Rate every label for one patient, as of `as_of` (default: now, i.e. the whole record)."""
        return self.assess_many([source], as_of=as_of)[0]

    def assess_many(
        self, sources: Sequence[Any], as_of: datetime | date | None = None, batch_size: int = 16
    ) -> list[Assessment]:
        """Assess several patients, batching the forward passes."""
        records = [self.record_of(s, as_of) for s in sources]
        prepared = [self.encode(r) for r in records]
        out: list[Assessment] = []
        for k in range(0, len(records), batch_size):
            chunk = prepared[k : k + batch_size]
            probs = self.probabilities(self.logits([e for e, _ in chunk]))
            for (encoded, lin), record, p in zip(chunk, records[k : k + batch_size], probs, strict=True):
                out.append(self._assessment(record, lin, encoded, p))
        return out

    def explain(
        self,
        source: Any,
        target: Any,
        method: str = "integrated_gradients",
        as_of: datetime | date | None = None,
        **settings: Any,
    ) -> Explanation | list[Explanation]:
        """Explain a Consideration or code (or a list: they share work) for `source`; see cds_plugin.explain.

        Returns an Explanation, or a list of them (same order) when `target` is a list.
        """
        from cds_plugin.explain import explain

        return explain(self, source, target, method=method, as_of=as_of, **settings)

    def _assessment(self, record: PatientRecord, lin, encoded, probs: np.ndarray) -> Assessment:  # type: ignore[no-untyped-def]
        documented = documented_concepts(record)
        diagnoses, treatments = [], []
        for i, key in enumerate(self.labels.labels):
            c = Consideration(
                code=key.code,
                system=key.system,
                display=key.display,
                kind=key.kind,
                probability=float(probs[i]),
                threshold=self.model.thresholds[i],
                documented=key.id in documented,
                label_index=i,
            )
            (diagnoses if key.kind == DIAGNOSIS else treatments).append(c)
        diagnoses.sort(key=lambda c: -c.probability)
        treatments.sort(key=lambda c: -c.probability)
        reference_time = record.reference_time if record.reference_time else datetime.now(UTC)
        return Assessment(
            diagnoses=diagnoses,
            treatments=treatments,
            model_version=self.version,
            reference_time=reference_time,
            record=record,
            linearization=lin,
            encoded=encoded,
        )
