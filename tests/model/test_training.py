"""The whole pipeline on a tiny configuration: dataset, pretraining, fine-tuning, calibration, artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cds_plugin.model.artifacts import ModelLoadError, load_model
from cds_plugin.model.dataset import IGNORE, is_validation
from cds_plugin.model.training import TrainConfig, choose_thresholds, fit_temperature, masked_bce, train


def test_artifacts_are_complete(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "labels.json",
        "calibration.json",
        "thresholds.json",
        "training.json",
        "MODEL_VERSION",
    } <= names
    meta = json.loads((tiny_model / "training.json").read_text())
    assert meta["pretrain_losses"] and meta["finetune"]["history"]
    labels = json.loads((tiny_model / "labels.json").read_text())["labels"]
    assert labels and all(label["positives"] >= 1 for label in labels)
    assert {label["kind"] for label in labels} <= {"diagnosis", "treatment"}


def test_split_is_by_patient(tiny_model):
    meta = json.loads((tiny_model / "training.json").read_text())
    assert meta["patients"]["train"] and meta["patients"]["validation"]
    assert meta["patients"]["validation"] == len(meta["validation_patients"])


def test_split_is_deterministic_and_near_the_fraction():
    refs = [f"Patient/{i}" for i in range(2000)]
    share = sum(is_validation(r, 0.2) for r in refs) / len(refs)
    assert 0.17 < share < 0.23
    assert [is_validation(r, 0.2) for r in refs] == [is_validation(r, 0.2) for r in refs]


def test_training_is_reproducible(corpus, tmp_path):
    config = TrainConfig.tiny(limit_patients=8, finetune_epochs=1)
    a = train(corpus, tmp_path / "a", config, progress=False)
    b = train(corpus, tmp_path / "b", TrainConfig.tiny(limit_patients=8, finetune_epochs=1), progress=False)
    assert a["model_version"] == b["model_version"]


def test_masked_loss_ignores_known_concepts():
    import torch

    logits = torch.tensor([[5.0, -5.0, 100.0]])
    targets = torch.tensor([[1, 0, IGNORE]])
    assert masked_bce(logits, targets).item() < 0.01  # the ignored label's huge logit costs nothing


def test_temperature_is_fitted_and_bounded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(500, 3)).astype(np.int8)
    logits = (y * 2 - 1) * 3.0 + rng.normal(0, 3, size=y.shape)  # overconfident, noisy
    t = fit_temperature(logits * 4, y)
    assert 1.0 < t <= 20.0
    assert fit_temperature(np.zeros((2, 2)), np.full((2, 2), IGNORE, dtype=np.int8)) == 1.0


def test_thresholds_per_label_and_pooled():
    probs = np.array([[0.9, 0.2], [0.8, 0.3], [0.1, 0.25], [0.2, 0.9]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=np.int8)
    thresholds, pooled = choose_thresholds(probs, targets, min_positive=2)
    assert 0.2 < thresholds[0] <= 0.8
    assert thresholds[1] == pooled


def test_base_checkpoint_can_be_fine_tuned(corpus, tmp_path):
    """`--base PATH`: any Hugging Face encoder on disk (here a tiny BERT saved for the test)."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from cds_plugin.model.engine import Engine
    from cds_plugin.model.tokenizer import FactTokenizer

    base = tmp_path / "base"
    texts = ["condition hypertension active", "lab glucose 100 mg/dl normal", "medication simvastatin"] * 20
    tok = FactTokenizer.train(texts, vocab_size=200, min_frequency=1)
    tok.save(base)
    PreTrainedTokenizerFast(tokenizer_file=str(base / "tokenizer.json")).save_pretrained(base)
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(base)
    train(
        corpus,
        tmp_path / "m",
        TrainConfig.tiny(limit_patients=8, finetune_epochs=1),
        base=base,
        progress=False,
    )
    engine = Engine.load(tmp_path / "m")
    assert engine.network.encoder.config.hidden_size == 32


def test_broken_model_folder_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = json.loads((broken / "labels.json").read_text())
    labels["labels"] = labels["labels"][:-1]
    (broken / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ModelLoadError, match="labels"):
        load_model(broken)
