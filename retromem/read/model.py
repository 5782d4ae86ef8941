"""The memory-attending reader: LUMEN-style live layers over precomputed token memories.

An encoder of N layers is split at ``N - k``. The lower N - k layers are the memory encoder: their output
over each passage alone is what a token-memory store holds (``layer = N - k``), decoded from its codec.
The top k layers run live, initialised from the encoder's own, once per retrieved passage over

    [question tokens, encoded live through the lower layers ; the passage's decoded memory tokens]

with an attention mask over the real tokens of both. ``k = N`` is the full re-encoding baseline (FiD's
encoder: ``[CLS] question [SEP] passage [SEP]`` through every layer, the plain encoder exactly), ``k = 0``
pure memory (no live layer: the question through all layers beside the memory).

The reader's own lower layers encode only the question (the memory comes from the store, made by the encoder
itself), so training fine-tunes them, as LUMEN fine-tunes its question encoder, unless the spec says
``tune_question_encoder=False`` (the question then stays in the frozen memory encoder's space).

Heads (:mod:`retromem.read.heads`) read the live outputs of all of a question's passages: classification
(pooled over the passages), extractive span (start/end over all passages' memory tokens) or generative
(a decoder cross-attending to the concatenated live outputs, FiD-style).

Batches (:mod:`retromem.read.batch` builds them) hold, with B questions and P passages each:
``question_ids``/``question_mask`` [B, Lq]; for k < N ``memory`` [B, P, Lm, d] (or, for a reader with a tuned pq
codebook, :mod:`retromem.read.codebook`, ``memory_codes`` [B, P, Lm, M]) and ``memory_mask`` [B, P, Lm];
for k = N ``pair_ids``/``pair_types``/``pair_mask`` [B, P, L]; ``token_index`` [B, P, L_live] (the position of
each live token in its passage's memory, -1 for question, special and padding tokens); ``passage_mask``
[B, P]; targets ``labels`` [B] / ``start``, ``end`` [B] (flat over P x L_live, -100: none) / ``answer_ids`` [B, La].
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from retromem.errors import ConfigError
from retromem.read.codebook import CodebookDecoder, codebook_shape
from retromem.read.heads import ClassificationHead, GenerativeHead, SpanHead
from retromem.read.reader_config import ReaderSpec

log = logging.getLogger(__name__)


class MemoryReader(nn.Module):
    """The reader (see the module's doc). Build with :meth:`from_encoder` or load with
    :func:`retromem.read.checkpoint.load_reader`."""

    def __init__(self, spec: ReaderSpec, encoder: nn.Module, tokenizer: Any, decoder: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.tokenizer = tokenizer
        hidden = int(encoder.config.hidden_size)
        _require_bert_layout(encoder, spec.encoder)
        layers = self.layers
        if spec.num_layers != len(layers):
            raise ValueError(f"spec says {spec.num_layers} layers, the encoder has {len(layers)}")
        if spec.head == "classification":
            self.head = ClassificationHead(hidden, len(spec.labels))
        elif spec.head == "span":
            self.head = SpanHead(hidden)
        else:
            self.head = GenerativeHead(hidden, decoder if decoder is not None else _bert_decoder(encoder, spec),
                                       tokenizer, spec)
        self.codebook = None
        if spec.tuned_codebook:  # MEMORY-VQ: the pq memory's codes decoded by the reader's own, trained, centroids
            self.codebook = CodebookDecoder(*codebook_shape(spec.memory.codec))
        if not spec.full and not spec.tune_question_encoder:  # the question encoded as the memory was
            for module in (encoder.embeddings, *layers[:spec.memory_layer]):
                module.requires_grad_(False)

    @classmethod
    def from_encoder(cls, spec: ReaderSpec, model_path: str, trust_remote_code: bool = False) -> MemoryReader:
        """A new reader over the encoder at ``model_path`` (its weights; the heads fresh)."""
        from transformers import AutoModel, AutoTokenizer

        from retromem.model_paths import remote_code_refusal

        with remote_code_refusal(spec.encoder or model_path):
            tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            encoder = AutoModel.from_pretrained(model_path, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                                add_pooling_layer=False)
        decoder = None
        if spec.head == "generative" and spec.decoder_model:
            with remote_code_refusal(spec.decoder_model):
                decoder = _seq2seq_decoder(spec.decoder_model, trust_remote_code)
        return cls(spec, encoder, tokenizer, decoder)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    @property
    def config(self):
        return self.encoder.config

    # ---- the encoder split ------------------------------------------------------------------------

    def lower_states(self, input_ids: torch.Tensor, mask: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """The output of the encoder's layer ``layer`` (default N - k; 0 = the embedding output) over
        ``input_ids`` alone: how the memory encoder encodes a question (or a passage)."""
        layer = self.spec.memory_layer if layer is None else layer
        hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self.run_layers(hidden, mask, 0, layer)

    def run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Layers ``first`` to ``last - 1`` over ``hidden`` [b, L, d], attending to the tokens where ``mask``."""
        if last <= first:
            return hidden
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.layers[first:last]:
            hidden = layer(hidden, attention)
            if isinstance(hidden, tuple):  # older transformers return a tuple
                hidden = hidden[0]
        return hidden

    def live(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The live outputs [B, P, L, d] of every (question, passage) and their mask [B, P, L]."""
        if self.spec.full:
            ids = batch["pair_ids"]
            b, p, length = ids.shape
            mask = batch["pair_mask"]
            out = self.encoder(input_ids=ids.view(b * p, length), attention_mask=mask.view(b * p, length),
                               token_type_ids=batch["pair_types"].view(b * p, length)).last_hidden_state
            return out.view(b, p, length, -1), mask
        question = self.lower_states(batch["question_ids"], batch["question_mask"])
        memory, memory_mask = self.memory_states(batch), batch["memory_mask"]
        b, p, lm, d = memory.shape
        lq = question.shape[1]
        hidden = torch.cat([question.unsqueeze(1).expand(b, p, lq, d).to(memory.dtype), memory], dim=2)
        mask = torch.cat([batch["question_mask"].unsqueeze(1).expand(b, p, lq), memory_mask], dim=2)
        out = self.run_layers(hidden.reshape(b * p, lq + lm, d), mask.reshape(b * p, lq + lm),
                              self.spec.memory_layer, self.spec.num_layers)
        return out.view(b, p, lq + lm, d), mask

    def memory_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoded memory [B, P, Lm, d]: the batch's ``memory``, or, for a reader with a tuned codebook, its
        ``memory_codes`` [B, P, Lm, M] decoded through the codebook (differentiably in the centroids)."""
        if self.codebook is None:
            return batch["memory"]
        if "memory_codes" not in batch:
            raise ValueError("this reader decodes its memory with its tuned codebook: the batch must carry "
                             "memory_codes (PassageReader gives codes for such a reader)")
        return self.codebook(batch["memory_codes"])

    # ---- forward ---------------------------------------------------------------------------------------

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's outputs (and ``loss`` when the batch holds targets)."""
        hidden, mask = self.live(batch)
        return self.head(hidden, mask, batch)

    @torch.inference_mode()
    def generate(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """Answer token ids of the generative head (greedy unless ``kwargs`` say otherwise)."""
        hidden, mask = self.live(batch)
        return self.head.generate(hidden, mask, **kwargs)


def _require_bert_layout(encoder: nn.Module, name: str) -> None:
    """Refuse an encoder the reader cannot split: it runs the embeddings and the layers of ``encoder.layer``
    itself (BERT's layout, shared by RoBERTa, ELECTRA, MiniLM...)."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not hasattr(encoder, "embeddings") or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{name or 'the encoder'} ({type(encoder).__name__}) is not laid out as BERT (embeddings, "
                          "encoder.layer): the reader splits such encoders only (BERT, RoBERTa, ELECTRA, MiniLM...)")


# ---- decoders -------------------------------------------------------------------------------------------

def _bert_decoder(encoder: nn.Module, spec: ReaderSpec) -> nn.Module:
    """A ``BertLMHeadModel`` decoder (causal self-attention + fresh cross-attention to the live outputs) of
    ``spec.decoder_layers`` layers, initialised from the encoder: embeddings and the lowest layers' self-attention
    and feed-forward; the output projection starts as the word embeddings (untied, so checkpoints hold plain
    tensors), its transform and the cross-attention fresh."""
    from transformers import BertConfig, BertLMHeadModel

    values = encoder.config.to_dict()
    values.update(is_decoder=True, add_cross_attention=True, num_hidden_layers=spec.decoder_layers,
                  tie_word_embeddings=False)
    values.pop("architectures", None)
    config = BertConfig(**{k: v for k, v in values.items() if k not in ("model_type", "transformers_version")})
    decoder = BertLMHeadModel(config)
    decoder.bert.embeddings.load_state_dict(encoder.embeddings.state_dict())
    for target, source in zip(decoder.bert.encoder.layer, encoder.encoder.layer):
        missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
        assert not unexpected and all(name.startswith("crossattention") for name in missing), (missing, unexpected)
    with torch.no_grad():
        decoder.cls.predictions.decoder.weight.copy_(encoder.embeddings.word_embeddings.weight)
    return decoder


def _seq2seq_decoder(path: str, trust_remote_code: bool) -> nn.Module:
    """Any Hugging Face seq2seq model (T5, BART...): its decoder reads the live outputs as encoder outputs."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from retromem.model_paths import resolve_model_path

    resolved = resolve_model_path(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(resolved, trust_remote_code=trust_remote_code, dtype=torch.float32)
    model.retromem_tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    return model

