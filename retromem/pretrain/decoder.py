"""The shallow decoders of the bottlenecked objectives (RetroMAE, DupMAE, CoT-MAE).

One post-LayerNorm transformer layer, BERT-shaped (sizes, activation and initialisation from the
encoder config), whose queries and keys/values may come from different streams: RetroMAE's
enhanced decoding lets a query stream attend to a content stream through a per-row mask, which
transformers' encoder layers cannot express (their attention takes keys and values from the
queries' own sequence). With the same tensor for both streams it is an ordinary self-attention
layer (CoT-MAE's and RetroMAE's basic decoding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from retromem.errors import ConfigError


class DecoderLayer(nn.Module):
    """Attention (queries from ``query``, keys/values from ``content``) + feed-forward, post-LN."""

    def __init__(self, config):
        super().__init__()
        hidden = _get(config, "hidden_size")
        self.num_heads = _get(config, "num_attention_heads")
        if hidden % self.num_heads:
            raise ConfigError(f"hidden_size {hidden} is not a multiple of num_attention_heads {self.num_heads}")
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_eps", 1e-12))
        self.intermediate = nn.Linear(hidden, _get(config, "intermediate_size"))
        act = getattr(config, "hidden_act", "gelu")
        self.activation = ACT2FN[act] if isinstance(act, str) else act
        self.output = nn.Linear(_get(config, "intermediate_size"), hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_eps", 1e-12))
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1))
        self.attention_dropout = getattr(config, "attention_probs_dropout_prob", 0.1)
        std = getattr(config, "initializer_range", 0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)

    def forward(self, query: torch.Tensor, content: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """query (N, Tq, H), content (N, Tk, H), attention_mask bool broadcastable to (N, 1, Tq, Tk), True = attend."""
        n, tq, hidden = query.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, -1, heads, hidden // heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(query)),
            split(self.key(content)),
            split(self.value(content)),
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(n, tq, hidden)
        x = self.attention_norm(query + self.dropout(self.attention_output(attended)))
        return self.output_norm(x + self.dropout(self.output(self.activation(self.intermediate(x)))))


class ShallowDecoder(nn.Module):
    """A stack of :class:`DecoderLayer`; the content stream stays fixed across layers."""

    def __init__(self, config, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(num_layers))

    def forward(self, query: torch.Tensor, content: torch.Tensor | None, attention_mask: torch.Tensor) -> torch.Tensor:
        """Two-stream decoding when ``content`` is given, plain self-attention when it is None."""
        for layer in self.layers:
            query = layer(query, query if content is None else content, attention_mask)
        return query


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) 0/1 -> bool (N, 1, 1, T) for self-attention over the real tokens."""
    return attention_mask.bool()[:, None, None, :]


def _get(config, name: str) -> int:
    value = getattr(config, name, None)
    if value is None:
        raise ConfigError(
            f"encoder config ({type(config).__name__}) has no {name!r}: the pretraining decoders need a "
            "BERT-like config (hidden_size, num_attention_heads, intermediate_size)"
        )
    return int(value)
