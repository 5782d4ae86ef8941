"""What the reader reads (:class:`ReadPassage`, :class:`ReadItem`) and the tensors a batch of them makes
(:func:`collate`; the layout is described in :mod:`retromem.read.model`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from retromem.read.heads import IGNORE
from retromem.read.reader_config import ReaderSpec


@dataclass(frozen=True)
class ReadPassage:
    """One retrieved passage as the reader sees it.

    ``token_ids`` [n] and ``spans`` [n, 2] are the memory's tokens (each kept vector stands for the original
    token positions ``[start, end)``; ``[i, i + 1]`` without merging); ``vectors`` [n, d] the decoded memory
    (None for a full re-encoding reader, which reads ``token_ids`` as text); ``text`` the text the memory
    encoder tokenised, to map answer spans back to characters (None: answers are decoded from token ids);
    ``codes`` [n, M] the memory's pq sub-codes instead of ``vectors``, for a reader that decodes them with its own
    tuned codebook (:mod:`retromem.read.codebook`).
    """

    passage_id: str
    token_ids: np.ndarray
    spans: np.ndarray
    vectors: np.ndarray | None = None
    text: str | None = None
    page_id: str | None = None
    codes: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(len(self.token_ids))


@dataclass(frozen=True)
class ReadItem:
    """One question with its passages (rank order) and, for training, its target: ``label`` (classification),
    ``span`` = (passage index, first memory token, last memory token) (span; None when no passage holds the
    answer) or ``answer`` (generative)."""

    qid: str
    question: str
    passages: tuple[ReadPassage, ...]
    label: int | None = None
    span: tuple[int, int, int] | None = None
    answer: str | None = None


def text_passage(passage_id: str, text: str, tokenizer: Any, max_length: int, page_id: str | None = None
                 ) -> ReadPassage:
    """A passage read from its text (full re-encoding): the tokenizer's tokens, one span each."""
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    n = len(ids)
    spans = np.stack([np.arange(n), np.arange(1, n + 1)], axis=1).astype(np.int32)
    return ReadPassage(passage_id, np.asarray(ids, dtype=np.int32), spans, None, text, page_id)


def collate(spec: ReaderSpec, tokenizer: Any, items: Sequence[ReadItem], passages: int | None = None,
            answer_tokenizer: Any = None, targets: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a batch of ``items``, each padded to ``passages`` passages (default: the most any has);
    generative answers in ``answer_tokenizer`` (default: ``tokenizer``). ``targets`` (training): span targets
    even when no item of the batch has its answer in its passages (all ignored; the head's loss is then zero)."""
    p_count = passages or max(len(item.passages) for item in items)
    b = len(items)
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # [UNK] is a passage's own token
    questions = [tokenizer(item.question, truncation=True, max_length=spec.max_question_length)["input_ids"]
                 for item in items]
    lq = max(len(q) for q in questions)
    batch: dict[str, torch.Tensor] = {}
    q_ids = torch.full((b, lq), tokenizer.pad_token_id, dtype=torch.long)
    q_mask = torch.zeros((b, lq), dtype=torch.long)
    for i, q in enumerate(questions):
        q_ids[i, :len(q)] = torch.tensor(q)
        q_mask[i, :len(q)] = 1
    batch["question_ids"], batch["question_mask"] = q_ids, q_mask
    passage_mask = torch.zeros((b, p_count), dtype=torch.long)
    for i, item in enumerate(items):
        passage_mask[i, :min(len(item.passages), p_count)] = 1
    batch["passage_mask"] = passage_mask
    offsets: list[list[int]] = []  # where memory token m of item i, passage j sits in the live sequence: off + m
    if spec.full:
        pairs = [[q + [int(t) for t in passage.token_ids[1:]] for passage in item.passages[:p_count]]
                 for q, item in zip(questions, items)]
        length = max(len(pair) for row in pairs for pair in row)
        ids = torch.full((b, p_count, length), tokenizer.pad_token_id, dtype=torch.long)
        types = torch.zeros((b, p_count, length), dtype=torch.long)
        mask = torch.zeros((b, p_count, length), dtype=torch.long)
        index = torch.full((b, p_count, length), -1, dtype=torch.long)
        for i, (q, row) in enumerate(zip(questions, pairs)):
            offsets.append([])
            for j, pair in enumerate(row):
                ids[i, j, :len(pair)] = torch.tensor(pair)
                types[i, j, len(q):len(pair)] = 1
                mask[i, j, :len(pair)] = 1
                offsets[i].append(len(q) - 1)
                _fill_index(index[i, j], items[i].passages[j].token_ids, len(q) - 1, special, skip_first=True)
        for j in range(p_count):  # padding passages: one token so no row is empty
            for i, item in enumerate(items):
                if j >= len(item.passages[:p_count]):
                    ids[i, j, 0], mask[i, j, 0] = tokenizer.cls_token_id, 1
        batch.update(pair_ids=ids, pair_types=types, pair_mask=mask)
    else:
        lm = max(passage.size for item in items for passage in item.passages[:p_count])
        first = next(passage for item in items for passage in item.passages)
        coded = first.codes is not None  # pq sub-codes, decoded by the reader's tuned codebook
        width = first.codes.shape[1] if coded else first.vectors.shape[1]
        memory = torch.zeros((b, p_count, lm, width), dtype=torch.long if coded else torch.float32)
        memory_mask = torch.zeros((b, p_count, lm), dtype=torch.long)
        index = torch.full((b, p_count, lq + lm), -1, dtype=torch.long)
        for i, item in enumerate(items):
            offsets.append([])
            for j, passage in enumerate(item.passages[:p_count]):
                n = passage.size
                memory[i, j, :n] = torch.from_numpy(np.asarray(passage.codes, dtype=np.int64) if coded
                                                    else np.asarray(passage.vectors, dtype=np.float32))
                memory_mask[i, j, :n] = 1
                offsets[i].append(lq)
                _fill_index(index[i, j], passage.token_ids, lq, special, skip_first=False)
        batch.update({"memory_codes" if coded else "memory": memory, "memory_mask": memory_mask})
    batch["token_index"] = index
    length = index.shape[-1]
    if spec.head == "classification" and all(item.label is not None for item in items):
        batch["labels"] = torch.tensor([item.label for item in items], dtype=torch.long)
    elif spec.head == "span" and (targets or any(item.span is not None for item in items)):
        start = torch.full((b,), IGNORE, dtype=torch.long)
        end = torch.full((b,), IGNORE, dtype=torch.long)
        for i, item in enumerate(items):
            if item.span is not None and item.span[0] < p_count:
                j, s, e = item.span
                first, last = j * length + offsets[i][j] + s, j * length + offsets[i][j] + e
                if min(index[i].view(-1)[first], index[i].view(-1)[last]) >= 0:  # never a masked target
                    start[i], end[i] = first, last
        batch.update(start=start, end=end)
    elif spec.head == "generative" and all(item.answer is not None for item in items):
        batch.update(_answers(spec, answer_tokenizer or tokenizer, [item.answer for item in items]))
    return batch


def _answers(spec: ReaderSpec, tokenizer: Any, answers: Sequence[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(list(answers), truncation=True, max_length=spec.max_answer_length, padding=True,
                        return_tensors="pt", return_token_type_ids=False)
    return {"answer_ids": encoded["input_ids"], "answer_mask": encoded["attention_mask"]}


def _fill_index(row: torch.Tensor, token_ids: np.ndarray, offset: int, special: set[int], skip_first: bool) -> None:
    """``row[offset + m] = m`` for each memory token ``m`` that is the passage's own (not special, and not the
    passage's first when it was dropped from the live sequence), within the row."""
    tokens = np.asarray(token_ids)
    keep = ~np.isin(tokens, np.fromiter(special, dtype=np.int64, count=len(special)))
    if skip_first and len(keep):
        keep[0] = False
    positions = np.nonzero(keep)[0]
    positions = positions[offset + positions < row.shape[0]]
    row[torch.from_numpy(offset + positions)] = torch.from_numpy(positions)
