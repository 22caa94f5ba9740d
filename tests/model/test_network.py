"""The network's pooling: max by default, mean as the smooth alternative, anything else refused."""

from __future__ import annotations

import pytest
import torch

from cds_plugin.model.facts import MASK
from cds_plugin.model.network import BagInputs, CdsFactsConfig, CdsFactsModel


def _model(pooling: str) -> CdsFactsModel:
    torch.manual_seed(0)
    config = CdsFactsConfig(
        n_codes=12,
        n_kinds=4,
        n_labels=3,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        pooling=pooling,
    )
    model = CdsFactsModel(config).eval()
    torch.nn.init.normal_(model.head.weight)  # the head starts at zero: give the pooled path a say
    return model


def _inputs(length: int = 5) -> dict[str, torch.Tensor]:
    codes = torch.tensor([[3, 4, 5, 6, 7][:length]])
    zeros = torch.zeros_like(codes)
    return {
        "codes": codes,
        "values": zeros,
        "times": zeros,
        "kinds": zeros + 1,
        "mask": torch.ones_like(codes, dtype=torch.bool),
    }


def test_max_pooling_is_the_default():
    assert CdsFactsConfig().pooling == "max"


def test_mean_pooling_averages_the_real_facts_only():
    model = _model("mean")
    inputs = _inputs()
    with torch.no_grad():
        full = model(**inputs)
        padded = {k: torch.cat([v, torch.zeros_like(v[:, :2])], 1) for k, v in inputs.items()}
        assert torch.allclose(model(**padded), full, atol=1e-6)  # padding does not dilute the mean
        assert not torch.allclose(_model("max")(**inputs), full)


def _second_difference(model: CdsFactsModel, n: int) -> float:
    """Largest second difference of label 0's logit along the straight path from the [MASK] fact to the
    input (the integrated-gradients path), with n points, in float64."""
    inputs = _inputs()
    model = model.double()
    codes = inputs["codes"]
    zeros = torch.zeros_like(codes)
    with torch.no_grad():
        x = model.embed(codes, inputs["values"], inputs["times"], inputs["kinds"])
        base = model.embed(torch.full_like(codes, MASK), zeros, zeros, zeros)
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        path = base + alphas[:, None, None] * (x - base)
        mask = inputs["mask"].expand(n, -1)
        out = model.forward_embeds(path, mask, BagInputs.of(codes.expand(n, -1), mask, None))[:, 0]
    return float((out[2:] - 2 * out[1:-1] + out[:-2]).abs().max())


def test_mean_pooling_is_smooth_along_a_path():
    """Halving the step divides the second differences of a twice-differentiable function by 4; at a
    kink (the max's argmax switching) only by about 2. Mean pooling shows the first (max pooling
    measured 2.5 on this network)."""
    coarse, fine = (_second_difference(_model("mean"), n) for n in (201, 401))
    assert coarse / fine > 3.5


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling"):
        CdsFactsConfig(pooling="sum")
