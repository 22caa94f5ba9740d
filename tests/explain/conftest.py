"""Tiny models for the explanation tests: one trained on planted rules, one on a few Synthea patients.

Training and explaining run on one torch thread: on a shared 2-core machine, two threads per process
were eight times slower here, and results do not depend on the thread count.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.explain.planted import write_corpus

TRAIN_DATA = Path(
    os.environ.get(
        "CDS_PLUGIN_TRAIN_DATA", Path(__file__).resolve().parents[2].parent / "shared/data/synthea/train"
    )
)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory) -> list[tuple[Path, dict[str, bool]]]:
    return write_corpus(tmp_path_factory.mktemp("planted") / "data", n=60, seed=7)


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory, planted_corpus) -> Path:
    from cds_plugin.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("planted-model")
    train(planted_corpus[0][0].parent, out, TrainConfig.tiny(finetune_epochs=20, lr=3e-3), progress=False)
    return out


@pytest.fixture(scope="session")
def planted_engine(planted_model):
    from cds_plugin.model.engine import Engine

    return Engine.load(planted_model)


@pytest.fixture(scope="session")
def synthea_corpus(tmp_path_factory) -> Path:
    """Links to the first 8 bundles of each Synthea generation."""
    if not TRAIN_DATA.exists():
        pytest.skip(f"training data not found at {TRAIN_DATA}")
    out = tmp_path_factory.mktemp("synthea")
    for sub in sorted(p for p in TRAIN_DATA.iterdir() if p.is_dir()):
        for path in sorted(sub.glob("*.json.gz"))[:8]:
            (out / f"{sub.name}-{path.name}").symlink_to(path)
    return out


@pytest.fixture(scope="session")
def synthea_engine(tmp_path_factory, synthea_corpus):
    from cds_plugin.model.engine import Engine
    from cds_plugin.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("synthea-model")
    train(synthea_corpus, out, TrainConfig.tiny(), progress=False)
    return Engine.load(out)
