"""The Engine: load a trained model once, then assess patients.

    from cds_plugin import Engine
    engine = Engine.load()                 # the default model shipped in the package
    assessment = engine.assess(bundle)     # any FHIR input cds_plugin.fhir reads, or a PatientRecord

This is the model's half; `cds_plugin.Engine` is its subclass in cds_plugin/explain/engine.py, which adds
`explain` (explanations depend on the model, never the other way round).

Works without Flask; thread-safe for concurrent `assess` calls (inference only, no shared mutable state).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cds_plugin.fhir.as_of import as_of as cut_record
from cds_plugin.fhir.linearize import Linearization
from cds_plugin.fhir.reader import read_record
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.artifacts import LoadedModel, ModelLoadError, load_model
from cds_plugin.model.assessment import Assessment, Consideration
from cds_plugin.model.batch import collate
from cds_plugin.model.concepts import DIAGNOSIS
from cds_plugin.model.facts import MASK, EncodedFacts
from cds_plugin.model.network import BagInputs
from cds_plugin.model.task import concept_references, documented_concepts

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


def default_model_path() -> Path:
    return DEFAULT_MODEL_DIR


class Engine:
    """A loaded model with its predictions: assess, assess_many (explain: cds_plugin.explain.engine)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.network = model.network
        self.vocab = model.vocab
        self.labels = model.labels
        self.version = model.version
        self.empty_probabilities = self._empty_probabilities()

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
            return cut_record(source, as_of) if as_of is not None else source
        return read_record(source, as_of=as_of)

    def encode(self, record: PatientRecord) -> tuple[EncodedFacts, Linearization]:
        """The model input of a record: its facts (most recent first, capped) and their encoding."""
        lin = self.model.linearize(record)
        return self.vocab.encode(lin, concept_references(record, self.labels)), lin

    # --- predictions --------------------------------------------------------------------------------

    def batch(self, encoded: Sequence[EncodedFacts]):  # type: ignore[no-untyped-def]
        """Padded tensors of encoded inputs (see cds_plugin.model.batch)."""
        return collate(list(encoded), self.network.config.n_codes, bool(self.network.config.display_dim))

    @torch.no_grad()
    def logits(self, encoded: Sequence[EncodedFacts]) -> np.ndarray:
        batch = self.batch(encoded)
        return self.network(**batch.embed_args(), mask=batch.mask).numpy()

    @torch.no_grad()
    def _empty_probabilities(self) -> np.ndarray:
        """Every label's probability for an empty record: one empty [MASK] fact (no code, value, time or
        kind; any number of them gives the same) and nothing for the bag path. It is the baseline of
        integrated gradients, so an explanation's scores add up to the change from it."""
        embeds = self.network.embed_blank(MASK, (1, 1))
        bag = BagInputs(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1))
        logits = self.network.forward_embeds(
            embeds, torch.ones(1, 1, dtype=torch.bool), bag, torch.zeros(1, 1)
        )
        return self.probabilities(logits.numpy())[0]

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

    def _assessment(
        self, record: PatientRecord, lin: Linearization, encoded: EncodedFacts, probs: np.ndarray
    ) -> Assessment:
        documented = documented_concepts(record, self.labels)
        sex, age = record.patient.sex, record.age
        diagnoses, treatments = [], []
        documented_ids = {self.labels.labels[i].id: self.labels.labels[i].display for i in documented}
        for i, label in enumerate(self.labels):
            ruled_out = next((documented_ids[o] for o in label.not_with if o in documented_ids), None)
            c = Consideration(
                code=label.code,
                system=label.system,
                display=label.display,
                kind=label.kind,
                probability=float(probs[i]),
                threshold=self.model.thresholds[i],
                documented=i in documented,
                label_index=i,
                codes=label.codes,
                plausible=label.plausible(sex, age),
                ruled_out_by=ruled_out,
                baseline_probability=float(self.empty_probabilities[i]),
            )
            (diagnoses if label.kind == DIAGNOSIS else treatments).append(c)
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
