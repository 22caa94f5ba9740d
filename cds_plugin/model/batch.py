"""Encoded records -> padded tensors for the network, with display embeddings for unseen codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cds_plugin.model.facts import EncodedFacts
from cds_plugin.model.network import BagInputs


@dataclass
class FactBatch:
    """Right-padded model inputs, shape (batch, longest); `mask` is true on real positions."""

    codes: torch.Tensor
    values: torch.Tensor
    times: torch.Tensor
    kinds: torch.Tensor
    concepts: torch.Tensor
    mask: torch.Tensor
    extra_displays: torch.Tensor | None = None
    display_index: torch.Tensor | None = None

    def bag(self) -> BagInputs:
        """What the network's bag-of-facts path reads of this batch (see network.BagInputs)."""
        return BagInputs.of(self.codes, self.mask, self.display_index)

    def embed_args(self) -> dict[str, torch.Tensor | None]:
        return {
            "codes": self.codes,
            "values": self.values,
            "times": self.times,
            "kinds": self.kinds,
            "concepts": self.concepts,
            "extra_displays": self.extra_displays,
            "display_index": self.display_index,
        }


def collate(items: Sequence[EncodedFacts], n_codes: int, displays: bool) -> FactBatch:
    """Pad to the longest item (at least one position, so an empty record still has a shape).

    With `displays`, [UNK] positions get their own display embedding: appended after the vocabulary's
    table and pointed at by `display_index`.
    """
    width = max([len(e) for e in items] + [1])
    arrays = {
        name: np.zeros((len(items), width), dtype=np.int64)
        for name in ("codes", "values", "times", "kinds", "concepts")
    }
    mask = np.zeros((len(items), width), dtype=bool)
    for row, e in enumerate(items):
        n = len(e)
        arrays["codes"][row, :n] = e.codes
        arrays["values"][row, :n] = e.values
        arrays["times"][row, :n] = e.times
        arrays["kinds"][row, :n] = e.kinds
        arrays["concepts"][row, :n] = e.concepts
        mask[row, :n] = True
    batch = FactBatch(**{k: torch.from_numpy(v) for k, v in arrays.items()}, mask=torch.from_numpy(mask))
    if displays:
        texts: list[str] = []
        index = arrays["codes"].copy()
        for row, e in enumerate(items):
            for position, text in e.unknown:
                index[row, position] = n_codes + len(texts)
                texts.append(text)
        if texts:
            from cds_plugin.model.display_vectors import embed

            batch.extra_displays = torch.from_numpy(embed(texts))
            batch.display_index = torch.from_numpy(index)
    return batch
