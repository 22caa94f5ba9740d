"""Slow: a small real model on a subset of the corpus beats the prevalence baseline (`pytest -m slow`)."""

from __future__ import annotations

import pytest

from cds_plugin.model.evaluation import evaluate_model
from cds_plugin.model.training import NetworkShape, TrainConfig, train
from tests.conftest import small_corpus


@pytest.mark.slow
def test_small_model_beats_prevalence(tmp_path):
    corpus = small_corpus(tmp_path, n=160)
    config = TrainConfig(
        network=NetworkShape(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        pretrain_epochs=1,
        finetune_epochs=6,
    )
    train(corpus, tmp_path / "model", config, progress=False)
    report = evaluate_model(tmp_path / "model", corpus, progress=False)
    model = report["overall"]["model"]["undocumented/diagnosis"]["macro_auprc"]
    prevalence = report["overall"]["prevalence"]["undocumented/diagnosis"]["macro_auprc"]
    assert model > prevalence, (model, prevalence)
