"""The network: a BERT-style encoder over the linearized record with a multi-label head.

One logit per label (diagnoses and treatments together); probabilities are sigmoids of the logits
divided by the calibration temperature, never a softmax across labels.

Pooling is the element-wise max of the tokens' final states (padding excluded). Measured on the
Synthea corpus (docs/model-card.md): with mean pooling, [CLS] or label-wise attention the small encoder
trained from scratch stayed at the prevalence loss for several epochs (validation macro AUPRC 0.05 on
the undocumented-diagnosis question after 4 epochs at 256 tokens), while max pooling learned from the
first epoch (0.19): the task is mostly "is there evidence of X anywhere in the record", which a max
over positions expresses directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel


@dataclass
class NetworkConfig:
    """Size of a from-scratch encoder (ignored for the encoder's own size when fine-tuning a base)."""

    vocab_size: int = 8000
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def bert_config(self) -> BertConfig:
        return BertConfig(**asdict(self), pad_token_id=0)


POOLINGS = ("max", "mean")


class CdsNetwork(nn.Module):
    """Encoder + pooling + dropout + linear head. `encoder` is any Hugging Face encoder (BERT-like)."""

    def __init__(self, encoder: nn.Module, n_labels: int, dropout: float = 0.1, pooling: str = "max") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.pooling = pooling
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_labels)

    @classmethod
    def from_scratch(cls, config: NetworkConfig, n_labels: int, pooling: str = "max") -> CdsNetwork:
        return cls(BertModel(config.bert_config(), add_pooling_layer=False), n_labels, pooling=pooling)

    @classmethod
    def from_base(cls, path: str | Path, n_labels: int, pooling: str = "max") -> CdsNetwork:
        """Fine-tune a Hugging Face encoder checkpoint on disk (never downloaded)."""
        try:  # the pooler is never used (mean pooling): leave it out where the encoder allows
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        return cls(encoder, n_labels, pooling=pooling)

    @classmethod
    def from_encoder_config(
        cls, encoder_config: dict[str, Any], n_labels: int, pooling: str = "max"
    ) -> CdsNetwork:
        """An empty network of a saved model's shape, to load its weights into."""
        config = AutoConfig.for_model(**encoder_config)
        try:
            encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler option
            encoder = AutoModel.from_config(config)
        return cls(encoder, n_labels, pooling=pooling)

    @property
    def embeddings(self) -> nn.Embedding:
        """The word embeddings (integrated gradients interpolate here)."""
        return self.encoder.get_input_embeddings()

    def pooled(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=False):  # type: ignore[no-untyped-def]
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
        )
        states = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.pooling == "max":
            pooled = states.masked_fill(mask == 0, torch.finfo(states.dtype).min).max(dim=1).values
        else:
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled, out

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits, shape (batch, n_labels)."""
        pooled, _ = self.pooled(input_ids, attention_mask, inputs_embeds)
        return self.head(self.dropout(pooled))


class MaskedFactModel(nn.Module):
    """Pretraining head: predict the tokens of masked facts from the rest of the record."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.decoder = nn.Linear(hidden, encoder.config.vocab_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Vocabulary logits at the masked `positions` only (a boolean mask): decoding every token to
        the vocabulary would cost more than the encoder itself."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.decoder(self.transform(states[positions]))
