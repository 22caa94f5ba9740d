"""Shared fixtures: the CDS Hooks schemas, a small Synthea corpus and a tiny model trained on it once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: a throwaway PostgreSQL cluster for the tests marked `postgres`, when PostgreSQL is installed
pytest_plugins = ["tests.helpers.postgres_cluster"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(os.environ.get("CDS_PLUGIN_SCHEMAS", ROOT.parent / "shared" / "cds-hooks-schemas"))


@pytest.fixture
def schemas_dir() -> Path:
    if not SCHEMAS.exists():
        pytest.skip(f"CDS Hooks schemas not found at {SCHEMAS}")
    return SCHEMAS


TRAIN_DATA = Path(
    os.environ.get("CDS_PLUGIN_TRAIN_DATA", ROOT.parent / "shared" / "data" / "synthea" / "train")
)


def small_corpus(tmp_root: Path, n: int = 24) -> Path:
    """Links to the first n bundles of each Synthea generation, so both are represented."""
    if not TRAIN_DATA.exists():
        pytest.skip(f"training data not found at {TRAIN_DATA}")
    out = tmp_root / "corpus"
    out.mkdir(exist_ok=True)
    for sub in sorted(p for p in TRAIN_DATA.iterdir() if p.is_dir()):
        for path in sorted(sub.glob("*.json.gz"))[: n // 2]:
            target = out / f"{sub.name}-{path.name}"
            if not target.exists():
                target.symlink_to(path)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus) -> Path:
    from cds_plugin.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    train(corpus, out, TrainConfig.tiny(), progress=False)
    return out


#: The thresholds of `card_model`: low enough that most fixtures get cards from a tiny model.
CARD_THRESHOLD = 0.1


@pytest.fixture(scope="session")
def card_model(tmp_path_factory, tiny_model) -> Path:
    """The tiny model with every threshold at CARD_THRESHOLD, for tests of what cards say and do.

    The tiny model's thresholds are fitted by F1 on a handful of validation positives (one pooled
    value for nearly every label), which leaves most fixtures with no card: the services' tests check
    the cards' form, wording and behaviour, not which considerations a real model would propose.
    """
    import json
    import shutil

    out = tmp_path_factory.mktemp("card-model") / "model"
    shutil.copytree(tiny_model, out)
    path = out / "thresholds.json"
    data = json.loads(path.read_text())
    data["thresholds"] = [CARD_THRESHOLD] * len(data["thresholds"])
    data["chosen_by"] = f"tests: every threshold set to {CARD_THRESHOLD}"
    path.write_text(json.dumps(data, indent=2))
    return out


@pytest.fixture(scope="session")
def engine(tiny_model):
    from cds_plugin.explain.engine import Engine

    return Engine.load(tiny_model)
