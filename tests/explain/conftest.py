"""A tiny model trained on planted rules (the Synthea tiny model, `engine`, comes from tests/conftest.py).

Training and explaining run on one torch thread: on a shared 2-core machine, two threads per process
were eight times slower here, and results do not depend on the thread count.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cds_plugin.model.dataset import bundle_files
from tests.explain.planted import write_corpus


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthea_assessments(engine, corpus):
    """The first six patients of the small Synthea corpus, assessed by the session's tiny model."""
    return engine.assess_many(bundle_files(corpus)[:6])


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory) -> list[tuple[Path, dict[str, bool]]]:
    return write_corpus(tmp_path_factory.mktemp("planted") / "data", n=120, seed=7)


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory, planted_corpus) -> Path:
    from cds_plugin.model.training import TrainConfig, train

    out = tmp_path_factory.mktemp("planted-model")
    train(planted_corpus[0][0].parent, out, TrainConfig.tiny(finetune_epochs=20, lr=3e-3), progress=False)
    return out


@pytest.fixture(scope="session")
def planted_engine(planted_model):
    from cds_plugin.explain.engine import Engine

    return Engine.load(planted_model)
