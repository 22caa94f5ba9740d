"""Turning a linearized record into model input, keeping the token span of every fact.

The tokenizer is a WordPiece vocabulary built from the training corpus with the `tokenizers` library
(or the tokenizer of a Hugging Face checkpoint given with `--base`). Facts are tokenized one by one, in
the linearization's order, and packed into `[CLS] fact fact ... [SEP]` until the length budget is
spent; a fact that does not fit whole is left out, so every kept token belongs to exactly one fact and
token attributions sum exactly to FHIR resources.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class EncodedInput:
    """Token ids of one record and, for each kept fact, its token span [start, end) and fact index."""

    input_ids: list[int]
    spans: list[tuple[int, int, int]]
    dropped_facts: int

    def __len__(self) -> int:
        return len(self.input_ids)


class FactTokenizer:
    """Wraps a `tokenizers.Tokenizer` with the special-token ids this project needs."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad_id = vocab["[PAD]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.mask_id = vocab["[MASK]"]
        self.unk_id = vocab["[UNK]"]
        self.special_ids = frozenset(vocab[t] for t in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> FactTokenizer:
        """A lowercase WordPiece vocabulary over fact texts, built deterministically.

        The vocabulary is the special tokens, every character (alone and as a `##` continuation), then
        the corpus's most frequent words (ties broken alphabetically) up to `vocab_size`. The
        `tokenizers` trainers break ties through hash maps, so the same corpus gave different vocabularies
        run to run; this keeps training reproducible. Frequent numbers and code tokens are single tokens; a
        rare word or number falls back to known prefixes and characters.
        """
        normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        pre_tokenizer = pre_tokenizers.Whitespace()
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        chars = sorted({ch for word in counts for ch in word})
        vocab = list(SPECIAL_TOKENS) + chars + [f"##{ch}" for ch in chars]
        words = sorted(
            (w for w, n in counts.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-counts[w], w)
        )
        vocab.extend(words[: max(vocab_size - len(vocab), 0)])
        tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))  # noqa: S106
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        return cls(tok)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FactTokenizer:
        """The tokenizer of a Hugging Face checkpoint on disk (tokenizer.json), for `--base`."""
        return cls(Tokenizer.from_file(str(Path(path) / "tokenizer.json")))

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    @classmethod
    def load(cls, directory: str | Path) -> FactTokenizer:
        return cls(Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))

    def encode_facts(
        self,
        texts: Sequence[str],
        max_length: int,
        kinds: Sequence[str] | None = None,
        budgets: Mapping[str, int] | None = None,
    ) -> EncodedInput:
        """Pack whole facts into at most `max_length` tokens including [CLS] and [SEP].

        With `kinds` (a resource type per fact) and `budgets` (tokens per type), a first pass keeps each
        type within its budget, so a long history of one type cannot crowd out the others; a second pass
        fills what is left with the facts skipped, in order. Kept facts stay in their original order.
        """
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False) if texts else []
        pieces = [enc.ids for enc in encodings]
        capacity = max_length - 2
        chosen: set[int] = set()
        used = 0
        if kinds is not None and budgets is not None:
            spent: dict[str, int] = {}
            for i, piece in enumerate(pieces):
                kind = kinds[i]
                limit = budgets.get(kind, capacity)
                if piece and spent.get(kind, 0) + len(piece) <= limit and used + len(piece) <= capacity:
                    chosen.add(i)
                    spent[kind] = spent.get(kind, 0) + len(piece)
                    used += len(piece)
        for i, piece in enumerate(pieces):
            if i not in chosen and piece and used + len(piece) <= capacity:
                chosen.add(i)
                used += len(piece)
        ids = [self.cls_id]
        spans: list[tuple[int, int, int]] = []
        for i in sorted(chosen):
            spans.append((len(ids), len(ids) + len(pieces[i]), i))
            ids.extend(pieces[i])
        ids.append(self.sep_id)
        dropped = sum(1 for i, piece in enumerate(pieces) if piece and i not in chosen)
        return EncodedInput(input_ids=ids, spans=spans, dropped_facts=dropped)

    def batch(self, encoded: Sequence[EncodedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids and attention mask, padded only to the longest in the batch."""
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[row, : len(e)] = 1
        return ids, mask
