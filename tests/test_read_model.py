"""The reader's model: the encoder split at N - k, k = N as the plain encoder, the heads, saving and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retromem.errors import ConfigError, MismatchError
from retromem.read.batch import ReadItem, ReadPassage, collate, text_passage
from retromem.read.checkpoint import load_reader, memory_info, require_memory, save_reader
from retromem.read.model import MemoryReader
from retromem.read.reader_config import ReaderSpec
from retromem.read.span import best_spans, find_answer_span, span_text

LAYERS = 4


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, tokenizer):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-reader-encoder")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=128,
                        vocab_size=len(tokenizer), max_position_embeddings=256, attn_implementation="eager")
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_reader(folder, k, head="classification", **spec):
    spec = ReaderSpec(encoder=str(folder), num_layers=LAYERS, live_layers=k, head=head,
                      labels=["SUPPORTS", "REFUTES"] if head == "classification" else [], **spec)
    torch.manual_seed(1)
    return MemoryReader.from_encoder(spec, str(folder)).eval()


def memory_passages(reader, texts, ids=None):
    """Passages with their memory: the reader's own lower layers over each text alone (what a store holds)."""
    out = []
    for i, text in enumerate(texts):
        p = text_passage(ids[i] if ids else f"p{i}", text, reader.tokenizer, 128)
        ids_t = torch.tensor(p.token_ids, dtype=torch.long)[None]
        with torch.no_grad():
            states = reader.lower_states(ids_t, torch.ones_like(ids_t))[0].numpy()
        out.append(ReadPassage(p.passage_id, p.token_ids, p.spans, states, text))
    return out


def test_the_split_at_n_minus_k_matches_the_plain_encoders_hidden_states(tiny_encoder_dir):
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(tiny_encoder_dir).eval()
    for k in (0, 1, 2, LAYERS):
        reader = make_reader(tiny_encoder_dir, k)
        enc = reader.tokenizer(["a protein binds the receptor", "short"], padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = plain(**enc, output_hidden_states=True).hidden_states
            lower = reader.lower_states(enc["input_ids"], enc["attention_mask"])
            top = reader.run_layers(lower, enc["attention_mask"], LAYERS - k, LAYERS)
        mask = enc["attention_mask"].bool()
        torch.testing.assert_close(lower[mask], expected[LAYERS - k][mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(top[mask], expected[LAYERS][mask], atol=1e-5, rtol=1e-5)


def test_k_equal_n_is_the_plain_encoder_plus_the_head(tiny_encoder_dir):
    from transformers import AutoModel

    reader = make_reader(tiny_encoder_dir, LAYERS)
    plain = AutoModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False).eval()
    passages = [text_passage(f"p{i}", t, reader.tokenizer, 64) for i, t in
                enumerate(["the gene codes a kinase", "insulin lowers blood glucose in patients"])]
    item = ReadItem("q", "does insulin lower glucose?", tuple(passages))
    batch = collate(reader.spec, reader.tokenizer, [item])
    with torch.no_grad():
        logits = reader(**batch)["logits"]
        pair = reader.tokenizer(["does insulin lower glucose?"] * 2, [p.text for p in passages], padding=True,
                                return_tensors="pt")
        assert torch.equal(pair["input_ids"], batch["pair_ids"][0])
        hidden = plain(**pair).last_hidden_state.unsqueeze(0)
        expected = reader.head(hidden, pair["attention_mask"][None], batch)["logits"]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_a_reader_reads_memory_and_saves_and_loads_with_the_same_logits(tiny_encoder_dir, tmp_path):
    reader = make_reader(tiny_encoder_dir, 2)
    info = memory_info({"fingerprint": "abc", "max_length": 128, "passage_prefix": "", "dim": 64}, 2,
                       {"name": "fp16"})
    reader.spec.memory = info
    item = ReadItem("q", "what binds?", tuple(memory_passages(reader, ["a protein binds", "the virus"])))
    batch = collate(reader.spec, reader.tokenizer, [item])
    with torch.no_grad():
        logits = reader(**batch)["logits"]
    save_reader(reader, tmp_path / "reader")
    loaded = load_reader(tmp_path / "reader")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["logits"], logits)
    assert loaded.spec.memory == info


def test_a_reader_refuses_a_memory_of_another_encoder_layer_or_codec(tiny_encoder_dir):
    spec = ReaderSpec(encoder="x", num_layers=6, live_layers=2, head="span")
    encoder = {"fingerprint": "abc", "max_length": 128, "passage_prefix": "", "dim": 64}
    spec.memory = memory_info(encoder, 4, {"name": "binary"})
    require_memory(spec, encoder, 4, {"name": "binary"}, "m")
    with pytest.raises(MismatchError, match="another encoder.*fingerprint"):
        require_memory(spec, {**encoder, "fingerprint": "zzz"}, 4, {"name": "binary"}, "m")
    with pytest.raises(MismatchError, match="holds layer 3.*reads layer 4"):
        require_memory(spec, encoder, 3, {"name": "binary"}, "m")
    with pytest.raises(MismatchError, match="in codec {'name': 'fp16'}.*trained on codec {'name': 'binary'}"):
        require_memory(spec, encoder, 4, {"name": "fp16"}, "m")
    with pytest.raises(MismatchError, match="codec"):
        require_memory(spec, encoder, 4, {"name": "binary", "dim": 64, "params": {"scale": "none"}}, "m")
    pq = ReaderSpec(encoder="x", num_layers=6, live_layers=2, head="span")
    pq.memory = memory_info(encoder, 4, {"name": "pq", "dim": 64, "params": {"bytes": 8, "train_size": 100}})
    require_memory(pq, encoder, 4, {"name": "pq", "dim": 64, "params": {"bytes": 8, "train_size": 900}}, "m")
    with pytest.raises(MismatchError, match="codec"):
        require_memory(pq, encoder, 4, {"name": "pq", "dim": 64, "params": {"bytes": 16}}, "m")
    with pytest.raises(ConfigError, match="--k 7.*6 layers"):
        ReaderSpec(encoder="x", num_layers=6, live_layers=7, head="span")


def test_an_encoder_not_laid_out_as_bert_is_refused_by_name(tokenizer):
    from transformers import T5Config, T5EncoderModel

    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                      num_heads=2))
    spec = ReaderSpec(encoder="tiny-t5", num_layers=2, live_layers=1, head="span")
    with pytest.raises(ConfigError, match=r"tiny-t5 \(T5EncoderModel\) is not laid out as BERT"):
        MemoryReader(spec, encoder, tokenizer)


def test_the_span_head_maps_answers_back_through_merged_tokens(tokenizer):
    text = "The Denver Broncos won Super Bowl 50 in February."
    ids = tokenizer(text)["input_ids"]
    n = len(ids)
    # [CLS], "the", then original tokens merged pairwise: each kept vector stands for two tokens
    spans = [[0, 1], [1, 2]] + [[i, min(i + 2, n)] for i in range(2, n, 2)]
    kept = [ids[s] for s, _ in spans]
    passage = ReadPassage("p", np.asarray(kept, dtype=np.int32), np.asarray(spans, dtype=np.int32),
                          np.zeros((len(spans), 4), np.float32), text)
    first, last = find_answer_span(passage, ["Denver Broncos"], tokenizer)
    assert (first, last) == (2, 2)  # one merged vector stands for "denver broncos"
    assert span_text(passage, first, last, tokenizer) == "Denver Broncos"
    first, last = find_answer_span(passage, ["super bowl"], tokenizer)  # case-insensitive; "won super" is merged
    assert span_text(passage, first, last, tokenizer) == "won Super Bowl 50"
    # without text the answer is decoded from the kept token ids
    bare = ReadPassage("p", passage.token_ids, passage.spans, passage.vectors, None)
    assert span_text(bare, 1, 1, tokenizer) == tokenizer.decode([kept[1]])
    start, end = torch.full((1, 2, 6), -1e9), torch.full((1, 2, 6), -1e9)
    start[0, 1, 2], end[0, 1, 4], end[0, 0, 5], start[0, 1, 5] = 5, 4, 9, 1  # a longer or reversed span is no answer
    assert best_spans(start, end, max_tokens=3)[0][:3] == (1, 2, 4)
    assert best_spans(start, end, max_tokens=2)[0][:3] != (1, 2, 4)


def test_the_span_head_learns_where_an_answer_is(tiny_encoder_dir):
    reader = make_reader(tiny_encoder_dir, 1, head="span")
    texts = ["the broncos beat the panthers in the game", "insulin is made in the pancreas by cells"]
    passages = memory_passages(reader, texts)
    items = []
    for question, answer, j in (("who beat the panthers?", "broncos", 0), ("where is insulin made?", "pancreas", 1)):
        first, last = find_answer_span(passages[j], [answer], reader.tokenizer)
        items.append(ReadItem(question, question, tuple(passages), span=(j, first, last)))
    batch = collate(reader.spec, reader.tokenizer, items)
    reader.train()
    optimizer = torch.optim.Adam([p for p in reader.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        loss = reader(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reader.eval()
    with torch.no_grad():
        out = reader(**batch)
    found = best_spans(out["start_logits"], out["end_logits"], 10)
    answers = []
    for i, (j, first, last, _) in enumerate(found):
        index = batch["token_index"][i, j]
        answers.append(span_text(passages[j], int(index[first]), int(index[last]), reader.tokenizer))
    assert answers == ["broncos", "pancreas"]


def test_the_generative_head_overfits_a_handful_of_qa_pairs(tiny_encoder_dir):
    reader = make_reader(tiny_encoder_dir, 1, head="generative", decoder_layers=1, max_answer_length=8)
    pairs = [("who won super bowl 50?", "denver broncos"), ("what lowers glucose?", "insulin"),
             ("where is the heart?", "the chest"), ("what does a kinase add?", "phosphate")]
    passages = memory_passages(reader, ["denver broncos won super bowl 50", "insulin lowers blood glucose",
                                        "the heart is in the chest", "a kinase adds phosphate groups"])
    items = [ReadItem(str(i), q, (passages[i], passages[(i + 1) % 4]), answer=a) for i, (q, a) in enumerate(pairs)]
    batch = collate(reader.spec, reader.tokenizer, items)
    reader.train()
    optimizer = torch.optim.Adam([p for p in reader.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(120):
        loss = reader(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reader.eval()
    inputs = {k: v for k, v in batch.items() if not k.startswith("answer")}
    answers = reader.head.decode(reader.generate(inputs))
    assert answers == [a for _, a in pairs], float(loss)


def test_generation_with_the_cross_attention_cache_matches_generation_without(tiny_encoder_dir, monkeypatch):
    from retromem.read import heads

    torch.manual_seed(3)
    reader = make_reader(tiny_encoder_dir, 1, head="generative", decoder_layers=2, max_answer_length=12).eval()
    passages = memory_passages(reader, ["insulin lowers blood glucose", "the heart is in the chest",
                                        "a kinase adds phosphate groups"])
    items = [ReadItem("0", "what lowers glucose?", tuple(passages)), ReadItem("1", "where?", tuple(passages[:2]))]
    inputs = collate(reader.spec, reader.tokenizer, items)
    with torch.no_grad():
        cached = reader.generate(inputs)
        monkeypatch.setattr(heads, "_cross_attention_cache", lambda: {"use_cache": False})
        uncached = reader.generate(inputs)
    assert cached.shape[1] > 2 and torch.equal(cached, uncached)


def test_any_hf_seq2seq_model_can_be_the_generative_decoder(tiny_encoder_dir, tokenizer, tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    folder = tmp_path / "tiny-bart"
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        decoder_start_token_id=tokenizer.cls_token_id, forced_eos_token_id=None)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reader = make_reader(tiny_encoder_dir, 1, head="generative", decoder_model=str(folder), max_answer_length=6)
    assert reader.head.seq2seq and isinstance(reader.head.project, torch.nn.Linear)  # 64-d live outputs -> 32-d
    passages = memory_passages(reader, ["insulin lowers blood glucose", "the heart is in the chest"])
    items = [ReadItem("0", "what lowers glucose?", tuple(passages), answer="insulin"),
             ReadItem("1", "where is the heart?", tuple(passages), answer="the chest")]
    batch = collate(reader.spec, reader.tokenizer, items, answer_tokenizer=reader.head.answer_tokenizer)
    reader.train()
    optimizer = torch.optim.Adam([p for p in reader.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(40):
        loss = reader(**batch)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2
    reader.eval()
    inputs = {k: v for k, v in batch.items() if not k.startswith("answer")}
    assert len(reader.head.decode(reader.generate(inputs))) == 2
    save_reader(reader, tmp_path / "reader")
    loaded = load_reader(tmp_path / "reader")
    assert loaded.head.seq2seq
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["loss"], reader(**batch)["loss"])


@pytest.mark.parametrize("k", [1, LAYERS])
def test_the_classification_head_learns_labels_that_depend_on_question_and_passage(tiny_encoder_dir, k):
    """The label is whether the claim's subject is the passage's: the live layers must relate the two, and a few
    Adam steps fit the four claims. (k = 0 is left out: with no live layer, question and memory never meet, and
    this XOR-like label is what pure memory cannot express, LUMEN's point.)"""
    reader = make_reader(tiny_encoder_dir, k)
    texts = ["the broncos beat the panthers in the game", "insulin is made in the pancreas by cells"]
    passages = memory_passages(reader, texts)
    claims = (("the broncos won the game", 0, 0), ("insulin is made in the pancreas", 1, 0),
              ("the broncos are made in the pancreas", 1, 1), ("insulin beat the panthers", 0, 1))
    items = [ReadItem(f"q{i}", claim, (passages[j],), label=label) for i, (claim, j, label) in enumerate(claims)]
    if k == LAYERS:  # full re-encoding reads the passage text, not its memory
        items = [ReadItem(it.qid, it.question, tuple(text_passage(p.passage_id, p.text, reader.tokenizer, 128)
                                                     for p in it.passages), label=it.label) for it in items]
    batch = collate(reader.spec, reader.tokenizer, items)
    reader.train()
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in reader.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        loss = reader(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reader.eval()
    with torch.no_grad():
        predicted = reader(**batch)["logits"].argmax(-1).tolist()
    assert predicted == [label for _, _, label in claims]


@pytest.mark.parametrize("tune", [True, False])
def test_training_tunes_the_question_encoder_unless_frozen_and_never_the_memory(tiny_encoder_dir, tune):
    reader = make_reader(tiny_encoder_dir, 1, head="span", tune_question_encoder=tune)
    passages = memory_passages(reader, ["the broncos beat the panthers in the game"])
    memory = passages[0].vectors.copy()
    first, last = find_answer_span(passages[0], ["broncos"], reader.tokenizer)
    batch = collate(reader.spec, reader.tokenizer, [ReadItem("q", "who beat the panthers?", tuple(passages),
                                                             span=(0, first, last))])
    before = {name: p.detach().clone() for name, p in reader.named_parameters()}
    reader.train()
    optimizer = torch.optim.SGD([p for p in reader.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        reader(**batch)["loss"].backward()
        optimizer.step()
    changed = {name for name, p in reader.named_parameters() if not torch.equal(p, before[name])}
    lower = {name for name in before if name.startswith("encoder.embeddings.")
             or any(name.startswith(f"encoder.encoder.layer.{i}.") for i in range(LAYERS - 1))}
    top = {name for name in before if name.startswith(f"encoder.encoder.layer.{LAYERS - 1}.")}
    assert changed & top and changed & {name for name in before if name.startswith("head.")}
    assert bool(changed & lower) is tune  # the question's lower layers: LUMEN's fine-tuned question encoder
    # the memory is the reader's input, never its parameter: no gradient reaches it, training leaves it as it was
    assert not batch["memory"].requires_grad and batch["memory"].grad is None
    np.testing.assert_array_equal(batch["memory"][0, 0, :memory.shape[0]].numpy(), memory.astype(np.float32))
    assert ReaderSpec.from_json(reader.spec.to_json()).tune_question_encoder is tune


def test_read_train_fine_tunes_the_question_encoder_unless_told_to_freeze_it():
    from retromem.cli import build_parser
    from retromem.cli.options import config_from_args
    from retromem.read.train_config import ReaderTrainConfig

    base = ["read", "train", "--task", "t", "--run", "r", "--output", "o"]
    for extra, tuned in (([], True), (["--freeze-question-encoder"], False)):
        args = build_parser().parse_args(base + extra)
        assert config_from_args(ReaderTrainConfig, args).tune_question_encoder is tuned


def test_a_span_batch_without_any_answer_in_its_passages_trains_with_a_zero_loss(tiny_encoder_dir):
    reader = make_reader(tiny_encoder_dir, 1, head="span").train()
    passages = memory_passages(reader, ["the broncos beat the panthers in the game"])
    items = [ReadItem("q", "who won?", tuple(passages))]  # span None: the answer is in no passage
    assert "start" not in collate(reader.spec, reader.tokenizer, items)  # predicting: no targets
    batch = collate(reader.spec, reader.tokenizer, items, targets=True)  # training: ignored targets
    assert batch["start"].tolist() == [-100] and batch["end"].tolist() == [-100]
    loss = reader(**batch)["loss"]
    loss.backward()
    assert loss.item() == 0.0


def test_unknown_tokens_are_passage_tokens_and_targets_are_never_masked(tiny_encoder_dir):
    reader = make_reader(tiny_encoder_dir, 1, head="span")
    tok = reader.tokenizer
    ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(["the", "broncos"]), tok.unk_token_id, tok.sep_token_id]
    spans = np.stack([np.arange(5), np.arange(1, 6)], axis=1).astype(np.int32)
    passage = ReadPassage("p", np.asarray(ids, dtype=np.int32), spans, np.zeros((5, 64), np.float32), None)
    batch = collate(reader.spec, tok, [ReadItem("q", "who?", (passage,), span=(0, 3, 3))])
    index = batch["token_index"][0, 0]
    lq = batch["question_ids"].shape[1]
    assert index[lq:lq + 5].tolist() == [-1, 1, 2, 3, -1]  # [CLS] and [SEP] masked, [UNK] the passage's own
    assert int(batch["start"][0]) == lq + 3
    on_sep = collate(reader.spec, tok, [ReadItem("q", "who?", (passage,), span=(0, 4, 4))])  # a masked target
    assert on_sep["start"].tolist() == [-100]
