"""The masking collators: ratios, whole words, 80/10/10, framing, CoT-MAE spans, bad input."""

from __future__ import annotations

import copy
import logging
import random

import pytest
import torch

from retromem.errors import DataError
from retromem.pretrain.collators import PretrainCollator
from retromem.pretrain.cotmae import split_neighbouring_spans
from retromem.pretrain.masking import IGNORE_INDEX, MaskingConfig, TokenizerError, TokenMasker, ordinary_positions
from retromem.pretrain.objective import ObjectivePlan

SENTENCES = [
    "Unbelievably, the bottlenecked autoencoder reconstructs tokenization artefacts gracefully.",
    "Dense retrieval encoders compress passages into a single embedding vector.",
    "Photosynthesis converts electromagnetic radiation into chemically stored energy.",
    "The immunohistochemistry results were inconclusive for the metastatic samples.",
    "Researchers hypothesised that neurodegenerative pathways involve misfolded proteins.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
]



@pytest.fixture(scope="module")
def masker(tokenizer):
    return TokenMasker.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def corpus_ids(tokenizer):
    """About 300 tokens per row: random orderings of words with many multi-piece words."""
    words = " ".join(SENTENCES).split()
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        text = " ".join(rng.choice(words) for _ in range(150))
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return rows


def _examples(rows, length):
    return [{"input_ids": row[:length]} for row in rows]


def test_table_marks_wordpiece_continuations(tokenizer, masker):
    assert masker.word_scheme == "wordpiece"
    pieces = tokenizer.tokenize("unbelievably tokenization")
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert [bool(masker.is_continuation[i]) for i in ids] == [p.startswith("##") for p in pieces]
    assert not masker.is_continuation[tokenizer.mask_token_id]


def test_frame_adds_cls_sep_and_padding(masker):
    tokens, lengths = masker.pad([torch.tensor([5000, 5001, 5002]), torch.tensor([6000])])
    input_ids, attention_mask = masker.frame(tokens, lengths, pad_to_multiple_of=8)
    assert input_ids.shape == (2, 8)
    assert input_ids[0, :5].tolist() == [masker.cls_id, 5000, 5001, 5002, masker.sep_id]
    assert input_ids[1, :3].tolist() == [masker.cls_id, 6000, masker.sep_id]
    assert (input_ids[1, 3:] == masker.pad_id).all()
    assert attention_mask.sum(1).tolist() == [5, 3]
    assert ordinary_positions(attention_mask).sum(1).tolist() == [3, 1]


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5])
def test_mask_ratio_and_replacement_shares(masker, corpus_ids, ratio, tokenizer):
    plan = ObjectivePlan("mlm", encoder_mask_ratio=ratio)
    collator = PretrainCollator(plan, masker, max_length=128, generator=torch.Generator().manual_seed(1))
    batch = collator(_examples(corpus_ids, 126) * 4)
    ordinary = ordinary_positions(batch["attention_mask"])
    selected = batch["labels"] != IGNORE_INDEX
    assert not (selected & ~ordinary).any(), "specials and padding are never masked"
    assert (selected.sum(1) >= 1).all()
    share = selected.sum().item() / ordinary.sum().item()
    assert abs(share - ratio) < 0.02
    original = batch["labels"][selected]
    shown = batch["input_ids"][selected]
    as_mask = (shown == masker.mask_id).float().mean().item()
    kept = (shown == original).float().mean().item()
    assert abs(as_mask - 0.8) < 0.03
    assert abs(kept - 0.1) < 0.03
    assert abs(1 - as_mask - kept - 0.1) < 0.03  # random replacements
    assert not (batch["input_ids"][~selected] == masker.mask_id).any()
    # random replacements are ordinary vocabulary tokens drawn at random: never a special token, rarely repeated
    replaced = shown[(shown != masker.mask_id) & (shown != original)]
    assert replaced.numel() > 20
    assert not torch.isin(replaced, torch.tensor(tokenizer.all_special_ids)).any()
    assert replaced.unique().numel() > 0.8 * replaced.numel()


def test_whole_words_are_masked_entirely(masker, corpus_ids):
    plan = ObjectivePlan("retromae")
    collator = PretrainCollator(plan, masker, max_length=128, generator=torch.Generator().manual_seed(2))
    batch = collator(_examples(corpus_ids, 126) * 2)
    original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    ordinary = ordinary_positions(batch["attention_mask"])
    selected = batch["labels"] != IGNORE_INDEX
    continuation = masker.is_continuation[original] & ordinary
    continuation[:, 1] = False  # a segment may start inside a word: its first piece starts a word here
    assert continuation.sum() > 100, "the test text must contain multi-piece words"
    previous = torch.roll(selected, 1, dims=1)
    assert torch.equal(selected[continuation], previous[continuation]), "a word was partly masked"
    assert abs(selected.sum().item() / ordinary.sum().item() - 0.3) < 0.02


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.45])
def test_whole_word_selection_skips_words_that_overrun_and_takes_later_ones(masker, corpus_ids, ratio):
    # transformers' rule: visit words in a random order, take each that still fits the budget. The
    # result is maximal: no word left out would still fit in the room the taken words leave.
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r[:126]) for r in corpus_ids], batch_first=True)
    maskable = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r[:126]), dtype=torch.bool) for r in corpus_ids],
                                               batch_first=True)
    selected = masker.select(ids, maskable, ratio, generator=torch.Generator().manual_seed(4))
    budgets = (maskable.sum(1).float() * ratio).round().long()
    hits = 0
    for row in range(ids.shape[0]):
        words, current = [], []
        for i in range(int(maskable[row].sum())):
            if current and not masker.is_continuation[ids[row, i]]:
                words.append(current)
                current = []
            current.append(i)
        words.append(current)
        taken = [w for w in words if selected[row, w].all()]
        assert all(not selected[row, w].any() for w in words if w not in taken), "a word was partly masked"
        used = sum(len(w) for w in taken)
        assert used <= budgets[row] or len(taken) == 1
        room = int(budgets[row]) - used
        assert all(len(w) > room for w in words if w not in taken), "a word that fits was skipped"
        hits += used == budgets[row]
    assert hits >= 0.9 * ids.shape[0]  # nearly every row meets its budget exactly


def test_token_level_masking_when_whole_word_is_off(masker, corpus_ids):
    ids = torch.tensor(corpus_ids[0][:100])[None].repeat(200, 1)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    selected = masker.select(ids, maskable, 0.25, whole_word=False, generator=torch.Generator().manual_seed(3))
    assert (selected.sum(1) == 25).all()


def test_retromae_basic_decoding_adds_decoder_view(masker, corpus_ids):
    plan = ObjectivePlan("retromae", enhanced_decoding=False, decoder_mask_ratio=0.5)
    batch = PretrainCollator(plan, masker, 128)(_examples(corpus_ids, 126) * 2)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_labels"}
    ordinary = ordinary_positions(batch["attention_mask"])
    decoder_selected = batch["decoder_labels"] != IGNORE_INDEX
    assert abs(decoder_selected.sum().item() / ordinary.sum().item() - 0.5) < 0.03
    original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    assert torch.equal(batch["decoder_labels"][decoder_selected], original[decoder_selected])


def test_cotmae_spans_are_neighbours_from_one_document(masker):
    # document d is the run of ids 2000 + 100 d + j: a token tells its document and its place
    lengths = [40, 37, 12, 4]
    docs = [[2000 + 100 * d + j for j in range(n)] for d, n in enumerate(lengths)]
    plan = ObjectivePlan("cotmae")
    collator = PretrainCollator(plan, masker, max_length=32)
    assert collator.segment_length == 60
    batch = collator([{"input_ids": doc} for doc in docs])
    n = len(docs)
    assert batch["input_ids"].shape[0] == 2 * n
    original = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    ordinary = ordinary_positions(batch["attention_mask"])
    for d in range(n):
        a = original[d][ordinary[d]].tolist()
        b = original[d + n][ordinary[d + n]].tolist()
        assert a + b == docs[d], "A then B is the document's segment, cut once"
        assert abs(len(a) - len(b)) <= 1 and len(a) >= 2
        assert {(t - 2000) // 100 for t in a + b} == {d}
    decoder_selected = batch["decoder_labels"] != IGNORE_INDEX
    assert (decoder_selected <= ordinary).all()


def test_split_neighbouring_spans_shapes():
    tokens = torch.arange(20).view(2, 10)
    spans, lengths = split_neighbouring_spans(tokens, torch.tensor([10, 7]))
    assert lengths.tolist() == [5, 3, 5, 4]
    assert spans[0, :5].tolist() == [0, 1, 2, 3, 4] and spans[2].tolist() == [5, 6, 7, 8, 9]
    assert spans[1, :3].tolist() == [10, 11, 12] and spans[3, :4].tolist() == [13, 14, 15, 16]


def test_long_examples_are_cut_to_the_segment_length(masker, corpus_ids):
    collator = PretrainCollator(ObjectivePlan("mlm"), masker, max_length=16)
    batch = collator(_examples(corpus_ids, 300)[:3])
    assert batch["input_ids"].shape == (3, 16)


def test_short_examples_are_skipped_with_a_warning(masker, caplog):
    collator = PretrainCollator(ObjectivePlan("retromae"), masker, max_length=32)
    with caplog.at_level(logging.WARNING, logger="retromem.pretrain.collators"):
        batch = collator([{"input_ids": [2000, 2001, 2002]}, {"input_ids": [2003]}, {"input_ids": []}])
    assert batch["input_ids"].shape[0] == 1
    assert collator.skipped_examples == 2
    assert "fewer than 2 tokens" in caplog.text
    cot = PretrainCollator(ObjectivePlan("cotmae"), masker, max_length=32)
    batch = cot([{"input_ids": [2000, 2001, 2002]}, {"input_ids": [2000, 2001, 2002, 2003]}])
    assert batch["input_ids"].shape[0] == 2  # one example kept, two spans


def test_bad_batches_raise_clear_errors(masker):
    collator = PretrainCollator(ObjectivePlan("cotmae"), masker, max_length=32)
    with pytest.raises(DataError, match="fewer than 4 tokens"):
        collator([{"input_ids": [2000, 2001, 2002]}])
    with pytest.raises(DataError, match="empty batch"):
        collator([])
    with pytest.raises(DataError, match="outside the tokenizer's vocabulary"):
        collator([{"input_ids": [2000, 2001, 10**6, 2002]}])
    with pytest.raises(DataError, match="input_ids"):
        collator([[2000, 2001]])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match="between 0 and 1"):
        MaskingConfig(ratio=ratio)
    with pytest.raises(ValueError, match="encoder_mask_ratio"):
        ObjectivePlan("mlm", encoder_mask_ratio=ratio)
    with pytest.raises(ValueError, match="decoder_mask_ratio"):
        ObjectivePlan("retromae", decoder_mask_ratio=ratio)


def test_replacement_probabilities_are_checked():
    with pytest.raises(ValueError, match="at most 1"):
        MaskingConfig(ratio=0.3, mask_token_prob=0.9, random_token_prob=0.2)


def test_tokenizer_without_mask_token_is_refused(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.mask_token = None
    with pytest.raises(TokenizerError, match="no mask token"):
        TokenMasker.from_tokenizer(broken)
