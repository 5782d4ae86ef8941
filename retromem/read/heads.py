"""The reader's heads, over the live outputs ``hidden`` [B, P, L, d] of B questions x P passages.

Every head sees the question's [CLS] output (position 0 of each live sequence) beside the passage tokens,
and mixes them multiplicatively, so that even ``k = 0`` (no live layer: question and memory never attend to
each other) is a reader, if a weak one, rather than a question-only guesser.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

IGNORE = -100


def passage_token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, P, L] True where a live token is a passage's own (not question, special or padding), in a real passage."""
    return (batch["token_index"] >= 0) & batch["passage_mask"].bool().unsqueeze(-1)


class ClassificationHead(nn.Module):
    """Labels pooled over the passages: per passage, features of the question's [CLS] output ``c`` and the mean
    ``m`` of the passage tokens' outputs, ``[c, m, c * m]``, give label logits and a relevance score; the
    question's logits are the passages' logits weighted by the softmax of their scores."""

    def __init__(self, hidden: int, labels: int):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh())
        self.classify = nn.Linear(hidden, labels)
        self.relevance = nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        tokens = passage_token_mask(batch).unsqueeze(-1).to(hidden.dtype)
        cls = hidden[:, :, 0]
        mean = (hidden * tokens).sum(2) / tokens.sum(2).clamp(min=1)
        features = self.features(torch.cat([cls, mean, cls * mean], dim=-1))
        scores = self.relevance(features).squeeze(-1).float()
        scores = scores.masked_fill(~batch["passage_mask"].bool(), torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1).unsqueeze(-1)
        logits = (self.classify(features).float() * weights).sum(1)
        out: dict[str, Any] = {"logits": logits, "passage_weights": weights.squeeze(-1)}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits, batch["labels"])
        return out


class SpanHead(nn.Module):
    """Start and end logits over the passage tokens of all of a question's passages (one softmax across them,
    as multi-passage BERT): a linear score of each token plus its bilinear match with the question's [CLS]."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(hidden, 2)
        self.query = nn.Linear(hidden, 2 * hidden)
        self.hidden = hidden

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        b, p, length, d = hidden.shape
        query = self.query(hidden[:, :, 0]).view(b, p, 1, 2, d)
        match = (hidden.unsqueeze(3) * query).sum(-1) / math.sqrt(d)  # [B, P, L, 2]
        logits = (self.score(hidden) + match).float()
        logits = logits.masked_fill(~passage_token_mask(batch).unsqueeze(-1), torch.finfo(logits.dtype).min)
        start, end = logits[..., 0], logits[..., 1]
        out: dict[str, Any] = {"start_logits": start, "end_logits": end}
        if "start" in batch:
            targets = batch["start"] != IGNORE
            if targets.any():
                flat_start, flat_end = start.reshape(b, -1)[targets], end.reshape(b, -1)[targets]
                out["loss"] = (F.cross_entropy(flat_start, batch["start"][targets])
                               + F.cross_entropy(flat_end, batch["end"][targets])) / 2
            else:  # no answer found in any passage of the batch: a zero loss that keeps the graph
                out["loss"] = start.new_zeros(()) + 0.0 * self.score.weight.sum()
        return out


class GenerativeHead(nn.Module):
    """A decoder cross-attending to the concatenated live outputs of all of a question's passages (FiD).

    ``decoder``: a ``BertLMHeadModel`` (``is_decoder``, ``add_cross_attention``; answers in the reader's own
    tokenizer, ``[CLS] answer [SEP]``, generation starts at [CLS] and stops at [SEP]), or any Hugging Face
    seq2seq model, whose own decoder and tokenizer are used and which reads the live outputs (projected to its
    width when it differs) as its encoder's outputs."""

    def __init__(self, hidden: int, decoder: nn.Module, tokenizer: Any, spec: Any):
        super().__init__()
        self.decoder = decoder
        self.seq2seq = bool(getattr(decoder.config, "is_encoder_decoder", False))
        self.answer_tokenizer = getattr(decoder, "retromem_tokenizer", None) if self.seq2seq else tokenizer
        width = int(getattr(decoder.config, "d_model", getattr(decoder.config, "hidden_size", hidden)))
        self.project = nn.Linear(hidden, width) if width != hidden else nn.Identity()
        self.max_answer_length = spec.max_answer_length

    def _memory(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p, length, d = hidden.shape
        return self.project(hidden.reshape(b, p * length, d)), mask.reshape(b, p * length)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        memory, memory_mask = self._memory(hidden, mask)
        if "answer_ids" not in batch:
            return {"memory": memory}
        answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
        labels = answers.masked_fill(answer_mask == 0, IGNORE)
        if self.seq2seq:
            from transformers.modeling_outputs import BaseModelOutput

            out = self.decoder(encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=memory_mask,
                               labels=labels)
        else:
            out = self.decoder(input_ids=answers, attention_mask=answer_mask, encoder_hidden_states=memory,
                               encoder_attention_mask=memory_mask, labels=labels)
        return {"loss": out.loss, "logits": out.logits}

    def generate(self, hidden: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        memory, memory_mask = self._memory(hidden, mask)
        settings = {"max_new_tokens": self.max_answer_length, "do_sample": False, "num_beams": 1, **kwargs}
        if self.seq2seq:
            from transformers.modeling_outputs import BaseModelOutput

            return self.decoder.generate(encoder_outputs=BaseModelOutput(last_hidden_state=memory),
                                         attention_mask=memory_mask, **settings)
        tok = self.answer_tokenizer
        start = torch.full((memory.shape[0], 1), tok.cls_token_id, dtype=torch.long, device=memory.device)
        return self.decoder.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                     encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
                                     eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                                     bos_token_id=tok.cls_token_id, **_cross_attention_cache(), **settings)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.answer_tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _cross_attention_cache() -> dict[str, Any]:
    """The key/value cache a BERT decoder with cross-attention needs to generate: an ``EncoderDecoderCache`` (the
    cross-attention's keys and values over the passages computed once, not at every answer token; greedy output
    unchanged). ``generate`` builds a plain ``DynamicCache`` for a decoder-only model, which BERT's cross-attention
    cannot use. The argument is ``cache`` in recent transformers, ``past_key_values`` before."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return {"use_cache": True, _cache_argument(): EncoderDecoderCache(DynamicCache(), DynamicCache())}


@functools.cache
def _cache_argument() -> str:
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__) >= Version("5.25") else "past_key_values"
