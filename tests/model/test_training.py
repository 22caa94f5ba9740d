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
        "cds_plugin.json",
        "facts.json",
        "labels.json",
        "calibration.json",
        "thresholds.json",
        "training.json",
        "MODEL_VERSION",
    } <= names
    meta = json.loads((tiny_model / "training.json").read_text())
    assert meta["pretrain_losses"] and meta["finetune"]["history"]
    labels = json.loads((tiny_model / "labels.json").read_text())["labels"]
    assert labels and any(label["positives"] >= 1 for label in labels)
    assert {label["kind"] for label in labels} <= {"diagnosis", "treatment"}
    assert all(label["codes"] for label in labels)


def test_split_is_by_patient(tiny_model):
    meta = json.loads((tiny_model / "training.json").read_text())
    assert meta["patients"]["train"] and meta["patients"]["validation"]
    assert meta["patients"]["validation"] == len(meta["validation_patients"])


def test_split_is_deterministic_and_near_the_fraction():
    refs = [f"Patient/{i}" for i in range(2000)]
    share = sum(is_validation(r, 0.2) for r in refs) / len(refs)
    assert 0.17 < share < 0.23
    assert [is_validation(r, 0.2) for r in refs] == [is_validation(r, 0.2) for r in refs]


def test_another_split_salt_draws_another_split_of_the_same_size():
    refs = [f"Patient/{i}" for i in range(2000)]
    shipped = {r for r in refs if is_validation(r, 0.2)}
    other = {r for r in refs if is_validation(r, 0.2, "cds-plugin-split-cv2")}
    assert 0.17 < len(other) / len(refs) < 0.23
    assert len(shipped & other) < 0.35 * len(shipped)  # about 20 % overlap, as two random draws
    assert TrainConfig().split_salt == "cds-plugin-split-v1"  # the shipped model's split is unchanged


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


def test_model_is_a_hugging_face_model(tiny_model):
    """save_pretrained / from_pretrained with safetensors: the folder loads with transformers alone."""
    from cds_plugin.model.network import CdsFactsConfig, CdsFactsModel

    config = CdsFactsConfig.from_pretrained(tiny_model)
    assert config.model_type == "cds-facts"
    model = CdsFactsModel.from_pretrained(tiny_model)
    assert model.config.n_labels == config.n_labels


def test_pretraining_lowers_its_own_loss(corpus, tmp_path):
    meta = train(
        corpus, tmp_path / "m", TrainConfig.tiny(limit_patients=12, pretrain_epochs=5), progress=False
    )
    losses = meta["pretrain_losses"]  # 12 patients: epoch to epoch it is noisy, over five it falls
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_masks_are_drawn_again_each_epoch(corpus):
    """The "not documented" question is resampled: the same situation is masked differently over epochs."""
    import random

    from cds_plugin.model.dataset import build_situations, load_corpus
    from cds_plugin.model.label_space import LabelSpace
    from cds_plugin.model.task import draw_mask

    labels = LabelSpace.from_file()
    situations = build_situations(load_corpus(corpus, progress=False), 2, 13, labels)
    rich = [s for s in situations if len(s.documented) >= 3]
    assert rich
    rng = random.Random(0)
    draws = [[draw_mask(s, rng, 0.5) for s in rich] for _ in range(3)]
    assert draws[0] != draws[1] or draws[1] != draws[2]


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


def test_cli_trains_with_mean_pooling(corpus, tmp_path, capsys):
    from cds_plugin.cli import main
    from cds_plugin.model.network import CdsFactsConfig

    out = tmp_path / "mean"
    assert (
        main(["train", "--data", str(corpus), "--out", str(out), "--tiny", "--pooling", "mean", "--quiet"])
        == 0
    )
    assert CdsFactsConfig.from_pretrained(out).pooling == "mean"
    assert json.loads(capsys.readouterr().out)["model_version"].startswith("cds-plugin-")


def test_sex_balance_weighs_both_sexes_positives_alike():
    from types import SimpleNamespace

    from cds_plugin.model.training import MAX_BALANCE, sex_balance

    def example(sex: str, *positive: int):  # type: ignore[no-untyped-def]
        return SimpleNamespace(
            situation=SimpleNamespace(sex=sex, documented=frozenset(positive), new=frozenset())
        )

    # label 0: 3 female and 1 male positives; label 1: women only; label 2: 1 female, 10 male
    data = [example("female", 0, 1, 2), example("female", 0, 1), example("female", 0)]
    data += [example("male", 0, 2)] + [example("male", 2) for _ in range(9)] + [example("male")]
    weights = sex_balance(data, 3)
    female, male = weights[0], weights[3]
    assert 3 * female[0] == pytest.approx(1 * male[0]) and female[0] < 1 < male[0]
    assert female[1] == male[1] == 1.0  # one sex only: nothing to balance
    assert female[2] == MAX_BALANCE and male[2] == pytest.approx(11 / 20)
    assert (weights[:3] == female).all() and (weights[3:] == male).all()


def test_masked_loss_weighs_positives_only():
    import torch

    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[1, 0]])
    plain = masked_bce(logits, targets).item()
    weighted = masked_bce(logits, targets, torch.tensor([[3.0, 3.0]])).item()
    assert weighted == pytest.approx(plain * (3 + 1) / 2)  # the negative keeps weight 1


def test_cli_trains_sex_balanced(corpus, tmp_path):
    from cds_plugin.cli import main

    out = tmp_path / "balanced"
    args = ["train", "--data", str(corpus), "--out", str(out), "--tiny", "--balance-sex", "--quiet"]
    assert main(args) == 0
    assert json.loads((out / "training.json").read_text())["config"]["balance_sex"] is True


def test_a_model_reads_the_linearization_it_was_trained_on(corpus, tmp_path, tiny_model):
    """By default activities and reasons are positions of their own; `--no-...` trains without them,
    and an old model folder that does not say reads as without."""
    from cds_plugin.cli import main
    from cds_plugin.fhir import linearize
    from cds_plugin.model.dataset import load_corpus
    from cds_plugin.model.engine import Engine

    out = tmp_path / "plain"
    args = ["train", "--data", str(corpus), "--out", str(out), "--tiny", "--quiet"]
    assert main([*args, "--no-care-plan-activities", "--no-coded-reasons"]) == 0
    assert json.loads((out / "training.json").read_text())["config"]["care_plan_activities"] is False
    meta = json.loads((out / "cds_plugin.json").read_text())
    assert meta["care_plan_activities"] is False and meta["coded_reasons"] is False
    default = json.loads((tiny_model / "cds_plugin.json").read_text())
    assert default["care_plan_activities"] is True and default["coded_reasons"] is True
    vocab = set(json.loads((tiny_model / "facts.json").read_text())["codes"])
    records = load_corpus(corpus, progress=False)
    record = next(
        r
        for r in records
        if any(a.primary for p in r.care_plans for a in p.activities)
        and any(x.primary for e in r.encounters for x in e.reasons)
    )
    activity_codes = {
        a.primary.token for r in records for p in r.care_plans for a in p.activities if a.primary
    }
    assert activity_codes & vocab  # the activities' codes were learnt as facts
    engine, plain = Engine.load(tiny_model), Engine.load(out)
    _, lin = engine.encode(record)
    _, plain_lin = plain.encode(record)
    n_parts = sum(".activity[" in s.path or ".reasonCode[" in s.path for s in lin.segments)
    assert any(".activity[" in s.path for s in lin.segments)
    assert any(".reasonCode[" in s.path for s in lin.segments)
    assert n_parts
    facts = [s for s in lin.segments if ".activity[" not in s.path and ".reasonCode[" not in s.path]
    plain_facts = [(s.reference, s.path) for s in plain_lin.segments]
    assert [(s.reference, s.path) for s in facts] == plain_facts[: len(facts)]  # in order, up to the cap
    max_facts = load_model(tiny_model).max_facts
    assert lin == linearize(record, max_facts=max_facts, activities=True, reasons=True)
    assert plain_lin == linearize(record, max_facts=max_facts)
    del meta["care_plan_activities"], meta["coded_reasons"]  # a folder written before the options
    (out / "cds_plugin.json").write_text(json.dumps(meta))
    old = load_model(out)
    assert not old.care_plan_activities and not old.coded_reasons
