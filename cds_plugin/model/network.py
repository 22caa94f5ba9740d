"""The network: a self-attention encoder over FHIR facts, fused with a linear bag-of-facts path.

A Hugging Face model (`CdsFactsConfig` + `CdsFactsModel`: `save_pretrained` / `from_pretrained`,
safetensors). Each position is one fact (facts.py); its embedding is the sum of the code's embedding
(plus a learned projection of the code display's MiniLM embedding, display_vectors.py), the value bin's,
the time bucket's, the kind's and the consideration's (for a Condition or MedicationRequest that states
one), layer-normalized. Two paths give the logits, summed (one per label, sigmoid, never a softmax
across labels):

- pooled: `num_layers` pre-norm self-attention layers over the facts (no positional embeddings: a
  record is a set of dated facts, the time bucket says when), the element-wise max over facts
  (`pooling="mean"`: their mean, smooth along an integrated-gradients path), a linear head;
- bag: a weight per code and label, summed over the record's distinct codes (a code present counts
  once, however many facts it has; each distinct unseen code adds [UNK]'s weight) plus a bias per
  label. These tables are a logistic regression on code presence, fitted to convergence before the
  rest is trained and then frozen (training.fit_linear): the attention path learns what it misses.

Each part can be switched off in the config (`attention=False` pools the embeddings directly,
`pooled=False` leaves the bag path alone, `bag=False` the attention path alone): docs/model-card.md's
ablation measures each. Explanations interpolate the post-norm fact embeddings and a presence gate per
fact (the code weights are multiplied by it) from a baseline to the input (`embed` then
`forward_embeds`), so attributions are per fact with nothing to map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

#: How the pooled path reduces its per-fact states: element-wise max, or mean over the real facts.
POOLINGS = ("max", "mean")


class CdsFactsConfig(PretrainedConfig):
    model_type = "cds-facts"

    def __init__(
        self,
        n_codes: int = 8,
        n_kinds: int = 4,
        n_values: int = 11,
        n_times: int = 13,
        n_labels: int = 1,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 256,
        dropout: float = 0.1,
        attention: bool = True,
        pooled: bool = True,
        bag: bool = True,
        display_dim: int = 0,
        n_concepts: int = 0,
        pooling: str = "max",
        **kwargs,  # type: ignore[no-untyped-def]
    ) -> None:
        super().__init__(**kwargs)
        self.n_codes = n_codes
        self.n_kinds = n_kinds
        self.n_values = n_values
        self.n_times = n_times
        self.n_labels = n_labels
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.attention = attention
        self.pooled = pooled
        self.bag = bag
        self.display_dim = display_dim
        self.n_concepts = n_concepts
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.pooling = pooling


class FactAttentionLayer(nn.Module):
    """Pre-norm multi-head self-attention and feed-forward; returns the attention map when asked."""

    def __init__(self, config: CdsFactsConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.heads = config.num_heads
        self.norm1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h)
        self.ff = nn.Sequential(
            nn.Linear(h, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, h)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads) + bias
            weights = scores.softmax(-1)
            context = weights @ v
        else:
            context = nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.dropout.p if self.training else 0.0
            )
        x = x + self.dropout(self.out(context.transpose(1, 2).reshape(b, n, h)))
        x = x + self.dropout(self.ff(self.norm2(x)))
        return x, weights


class CdsFactsModel(PreTrainedModel):
    """Facts in, one logit per label out (see the module docstring)."""

    config_class = CdsFactsConfig
    base_model_prefix = "cds_facts"
    main_input_name = "codes"

    def __init__(self, config: CdsFactsConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.code_embeddings = nn.Embedding(config.n_codes, h, padding_idx=0)
        self.value_embeddings = nn.Embedding(config.n_values, h)
        self.time_embeddings = nn.Embedding(config.n_times, h, padding_idx=0)
        self.kind_embeddings = nn.Embedding(config.n_kinds, h, padding_idx=0)
        n_concepts = config.n_concepts
        self.concept_embeddings = nn.Embedding(n_concepts, h, padding_idx=0) if n_concepts else None
        if config.display_dim:
            self.register_buffer("display_table", torch.zeros(config.n_codes, config.display_dim))
            self.display_projection = nn.Linear(config.display_dim, h, bias=False)
        self.norm = nn.LayerNorm(h)
        self.embedding_dropout = nn.Dropout(config.dropout)
        attention = config.pooled and config.attention
        self.layers = nn.ModuleList(
            [FactAttentionLayer(config) for _ in range(config.num_layers if attention else 0)]
        )
        self.final_norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, config.n_labels) if config.pooled else None
        self.label_bias = nn.Parameter(torch.zeros(config.n_labels))
        self.code_weights = nn.Embedding(config.n_codes, config.n_labels) if config.bag else None
        self.post_init()
        if self.code_weights is not None:
            nn.init.zeros_(self.code_weights.weight)
            if self.head is not None:  # start from the fitted regression exactly
                nn.init.zeros_(self.head.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(
        self,
        codes: torch.Tensor,
        values: torch.Tensor,
        times: torch.Tensor,
        kinds: torch.Tensor,
        concepts: torch.Tensor | None = None,
        extra_displays: torch.Tensor | None = None,
        display_index: torch.Tensor | None = None,
        drop_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fact embeddings (batch, facts, hidden), after the layer norm.

        `extra_displays` (k, display_dim) are display embeddings of [UNK] codes and `display_index`
        (batch, facts) points each position into the vocabulary's display table followed by them.
        `drop_codes` (batch, facts, bool) replaces those positions' code embedding by [UNK]'s while
        keeping their display (training: teaches the model to read displays).
        """
        code_ids = codes if drop_codes is None else codes.masked_fill(drop_codes, 1)
        e = self.code_embeddings(code_ids) + self.value_embeddings(values)
        e = e + self.time_embeddings(times) + self.kind_embeddings(kinds)
        if self.concept_embeddings is not None and concepts is not None:
            e = e + self.concept_embeddings(concepts)
        if self.config.display_dim:
            table = self.display_table
            if extra_displays is not None and len(extra_displays):
                table = torch.cat([table, extra_displays.to(table.dtype)])
            index = codes if display_index is None else display_index
            e = e + self.display_projection(table[index])
        return self.norm(e)

    def embed_blank(self, fact: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Embeddings (*shape, hidden) of positions that all hold one special fact (facts.MASK, an empty
        fact: the empty record and integrated gradients' baseline; or facts.PAD), with no value, time,
        kind or consideration."""
        ids = torch.full(shape, fact, dtype=torch.long)
        zeros = torch.zeros_like(ids)
        return self.embed(ids, zeros, zeros, zeros, zeros)

    def encode(
        self, embeds: torch.Tensor, mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Per-fact final states (batch, facts, hidden) of the pooled path (the embeddings themselves
        without attention layers; None without the path) and, when asked, each layer's attention map
        (batch, heads, facts, facts)."""
        if self.head is None:
            return None, []
        if not self.layers:
            return embeds, []
        bias = torch.zeros(mask.shape, dtype=embeds.dtype, device=embeds.device)
        bias = bias.masked_fill(~mask, torch.finfo(embeds.dtype).min)[:, None, None, :]
        x = self.embedding_dropout(embeds)
        maps = []
        for layer in self.layers:
            x, weights = layer(x, bias, need_weights=output_attentions)
            if weights is not None:
                maps.append(weights)
        return self.final_norm(x), maps

    def explain_forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, bag: BagInputs
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Logits, attention maps and the pooled path's final states (attention explanations)."""
        states, maps = self.encode(embeds, mask, output_attentions=True)
        return self._logits(embeds, mask, states, bag, None), maps, states

    def forward_embeds(
        self, embeds: torch.Tensor, mask: torch.Tensor, bag: BagInputs, gates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (batch, n_labels) from fact embeddings, what the bag path reads (`FactBatch.bag()`)
        and the presence gate of each fact (default 1: integrated gradients moves it from 0 to 1)."""
        states, _ = self.encode(embeds, mask)
        return self._logits(embeds, mask, states, bag, gates)

    def _logits(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        states: torch.Tensor | None,
        bag: BagInputs,
        gates: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = self.label_bias.expand(embeds.shape[0], -1)
        if self.head is not None and states is not None:
            pool = _mean_pool if self.config.pooling == "mean" else _max_pool
            logits = logits + self.head(self.embedding_dropout(pool(states, mask)))
        if self.code_weights is not None:
            weights = self.code_weights(bag.codes)
            if gates is not None:
                weights = weights * gates[..., None]
            logits = logits + (weights * bag.weights[..., None]).sum(1)
        return logits

    def forward(
        self,
        codes: torch.Tensor,
        values: torch.Tensor,
        times: torch.Tensor,
        kinds: torch.Tensor,
        mask: torch.Tensor,
        concepts: torch.Tensor | None = None,
        extra_displays: torch.Tensor | None = None,
        display_index: torch.Tensor | None = None,
        drop_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = self.embed(codes, values, times, kinds, concepts, extra_displays, display_index, drop_codes)
        return self.forward_embeds(embeds, mask, BagInputs.of(codes, mask, display_index))


@dataclass(frozen=True)
class BagInputs:
    """What the bag path reads besides the embeddings: each fact's code id and its weight
    (`bag_weights`). Explanations expand it along the interpolation batch."""

    codes: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def of(
        cls, codes: torch.Tensor, mask: torch.Tensor, display_index: torch.Tensor | None = None
    ) -> BagInputs:
        return cls(codes, bag_weights(codes if display_index is None else display_index, mask))

    def expand(self, n: int) -> BagInputs:
        return BagInputs(self.codes.expand(n, -1), self.weights.expand(n, -1))


def bag_weights(index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 / (positions of the same code in the record) on real positions, 0 on padding: summing embeddings
    with these weights sums over distinct codes, each code's facts averaged. `index` is the code id (or,
    with display embeddings, the display index, so each unseen code counts on its own)."""
    real = mask.to(torch.float32)
    counts = torch.zeros(index.shape[0], int(index.max()) + 1 if index.numel() else 1)
    counts.scatter_add_(1, index, real)
    return real / counts.gather(1, index).clamp(min=1.0)


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    real = mask[..., None].to(states.dtype)
    return (states * real).sum(1) / real.sum(1).clamp(min=1.0)


def _max_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = states.masked_fill(~mask[..., None], torch.finfo(states.dtype).min)
    pooled = filled.max(dim=1).values
    return torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
