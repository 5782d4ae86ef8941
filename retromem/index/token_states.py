"""Per-token hidden states of passages at one layer of an encoder (what token memories store).

:func:`passage_layer_states` tokenizes passages as :meth:`Encoder.encode_passages` does (the passage
prefix, title and text, truncated to the encoder's maximum length), sorts them by length, runs them in
batches under the encoder's autocast, and returns for each passage, in the order given, the states of
its real tokens only (padding cut off) after layer ``layer`` (0 = the embedding output, N = the last of
N layers) as float32, with the token ids beside them. Passages longer than the maximum are truncated
and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from retromem.data.passage import Passage
from retromem.errors import ConfigError


@dataclass
class LayerStates:
    """The states of a list of passages: ``states[i]`` float32 ``(n_i, dim)``, ``token_ids[i]`` int32 ``(n_i,)``;
    ``truncated``: how many passages were longer than the encoder's maximum and cut to it."""

    states: list[np.ndarray]
    token_ids: list[np.ndarray]
    truncated: int = 0
    truncated_ids: list[str] = field(default_factory=list)

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(self.states, self.token_ids))


def num_layers(encoder) -> int:
    """The encoder's transformer layers (``layer`` may be 0..this)."""
    config = encoder.model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


def check_layer(encoder, layer: int) -> int:
    """``layer`` itself if the encoder has it; -1 means the last. Else a ConfigError naming the layer count."""
    count = num_layers(encoder)
    if layer == -1:
        return count
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= count:
        raise ConfigError(f"layer (--layer) {layer} is out of range: {encoder.config.model} has {count} layers, so "
                          f"give 0 (the embedding output) to {count} (the last), or -1 for the last")
    return layer


def passage_layer_states(encoder, passages: Sequence[Passage | str], layer: int = -1,
                         show_progress: bool = False) -> LayerStates:
    """States after ``layer`` for the real tokens of each passage (see the module's docstring)."""
    texts = [encoder.passage_prefix + (p.full_text() if isinstance(p, Passage) else p) for p in passages]
    ids = [p.id if isinstance(p, Passage) else str(i) for i, p in enumerate(passages)]
    return text_layer_states(encoder, texts, layer, show_progress=show_progress, names=ids)


def text_layer_states(encoder, texts: Sequence[str], layer: int = -1, show_progress: bool = False,
                      names: Sequence[str] | None = None, desc: str = "token states") -> LayerStates:
    """States after ``layer`` of ``texts`` as given (no prefix added)."""
    layer = check_layer(encoder, layer)
    out = LayerStates(states=[None] * len(texts), token_ids=[None] * len(texts))
    if not texts:
        return out
    encoded = encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_length, padding=False,
                                return_attention_mask=False, return_token_type_ids=False,
                                return_overflowing_tokens=False, return_length=False)["input_ids"]
    full_lengths = _untruncated_lengths(encoder, texts, encoded)
    for i, (ids, length) in enumerate(zip(encoded, full_lengths)):
        if length > len(ids):
            out.truncated += 1
            out.truncated_ids.append(names[i] if names is not None else str(i))
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")
    batch_size = encoder.config.batch_size
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = encoder.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            hidden = _hidden_at(encoder, batch, layer)
            for j, row in enumerate(rows):
                n = len(encoded[row])
                out.states[row] = hidden[j, :n].copy()
                out.token_ids[row] = np.asarray(encoded[row], dtype=np.int32)
            bar.update(len(rows))
    return out


@torch.inference_mode()
def _hidden_at(encoder, batch, layer: int) -> np.ndarray:
    input_ids = batch["input_ids"].to(encoder.device)
    mask = batch["attention_mask"].to(encoder.device)
    with encoder._autocast():
        if layer == num_layers(encoder):
            hidden = encoder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        else:
            hidden = encoder.model(input_ids=input_ids, attention_mask=mask,
                                   output_hidden_states=True).hidden_states[layer]
    return hidden.float().cpu().numpy()


def _untruncated_lengths(encoder, texts: Sequence[str], encoded: list[list[int]]) -> list[int]:
    """Token counts without truncation, for the texts that reached the maximum (the others were not cut)."""
    lengths = [len(ids) for ids in encoded]
    full = [i for i, n in enumerate(lengths) if n >= encoder.max_length]
    if full:
        long_ids = encoder.tokenizer([texts[i] for i in full], truncation=False, padding=False,
                                     return_attention_mask=False, return_token_type_ids=False,
                                     verbose=False)["input_ids"]
        for i, ids in zip(full, long_ids):
            lengths[i] = len(ids)
    return lengths
