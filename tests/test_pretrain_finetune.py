"""Contrastive fine-tuning: hard-negative mining, JSONL input, training, saving, resuming.

Everything runs on the tiny random BERT of conftest.py (a bare folder, and the same weights as a
sentence-transformers folder with mean pooling) and a toy BEIR set: one query per topic, whose
relevant documents share its two topic words.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from retromem.data.beir import load_beir
from retromem.errors import ConfigError, DataError, MismatchError, RetromemError
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.pretrain.contrastive_examples import build_examples, relevant_docs
from retromem.pretrain.contrastive_jsonl import read_jsonl_examples
from retromem.pretrain.contrastive_model import build_model
from retromem.pretrain.finetune import finetune
from retromem.pretrain.finetune_config import FinetuneConfig
from retromem.retrieve.dense_negatives import mine_negatives
from retromem.retrieve.hard_negatives import MiningConfig, pick_negatives

TOPICS = ["cat", "dog", "apple", "river", "piano", "rocket", "garden", "winter", "castle", "ocean", "pencil",
          "tiger", "violin", "desert", "coffee", "forest"]
WORDS = ["red", "blue", "green", "old", "young", "small", "large", "quiet", "loud", "bright", "dark", "warm",
         "cold", "fast", "slow", "happy"]
FILLER = ["the", "story", "about", "a", "place", "with", "many", "people", "and", "some", "time", "day"]


@pytest.fixture(scope="module")
def toy_beir(tmp_path_factory) -> Path:
    """16 topics x 3 documents; query i is judged relevant (grade 1) to the two documents holding its
    topic word and colour word, and non-relevant (grade 0) to the third, which holds the topic alone."""
    root = tmp_path_factory.mktemp("toy-beir")
    rng = random.Random(0)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, (topic, word) in enumerate(zip(TOPICS, WORDS)):
        for j in range(3):
            filler = " ".join(rng.choice(FILLER) for _ in range(6))
            text = f"{filler} {topic} {word if j < 2 else ''} {filler}"
            corpus.append({"_id": f"d{i}-{j}", "title": topic if j == 0 else "", "text": text})
            qrels.append(f"q{i}\td{i}-{j}\t{1 if j < 2 else 0}")
        queries.append({"_id": f"q{i}", "text": f"{word} {topic}"})
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    return root


def _config(tmp_path: Path, model: Path, data: Path, **overrides) -> FinetuneConfig:
    values = dict(output_dir=str(tmp_path / "run"), model=str(model), beir=str(data),
                  mining_workdir=str(tmp_path / "work"), batch_size=8, learning_rate=1e-3, warmup_ratio=0.0,
                  precision="fp32", max_steps=4, save_steps=1000, logging_steps=1000, show_progress=False,
                  mine_top_k=10)
    values.update(overrides)
    return FinetuneConfig(**values)


def _mrr(model: str | Path, data: Path, **encoder_options) -> float:
    """Mean reciprocal rank of the first relevant document, over the whole toy corpus (retromem's encoder)."""
    dataset = load_beir(str(data), split="train")
    encoder = Encoder(EncoderConfig(model=str(model), precision="fp32", **encoder_options))
    passages = list(dataset.iter_corpus())
    doc_vectors = encoder.encode_passages(passages)
    qids = sorted(dataset.queries)
    scores = encoder.encode_queries([dataset.queries[q] for q in qids]) @ doc_vectors.T
    relevant = relevant_docs(dataset.qrels)
    total = 0.0
    for row, qid in zip(scores, qids):
        ranking = [passages[i].id for i in np.argsort(-row, kind="stable")]
        total += 1.0 / (1 + min(ranking.index(d) for d in relevant[qid]))
    return total / len(qids)


def test_mining_excludes_positives_skips_and_picks_the_configured_number(tmp_path, tiny_model_dir, toy_beir):
    config = _config(tmp_path, tiny_model_dir, toy_beir)
    _, settings = build_model(config)
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling=settings["pooling"], normalize=True,
                                    max_length=settings["max_length"], precision="fp32"))
    dataset = load_beir(str(toy_beir), split="train")
    positives = relevant_docs(dataset.qrels)
    assert all(len(docs) == 2 for docs in positives.values())  # grade 0 is not a positive
    mined = mine_negatives(dataset.queries, positives, dataset.iter_corpus, encoder, MiningConfig(top_k=10),
                           name="toy", workdir=tmp_path / "work")
    skipped = mine_negatives(dataset.queries, positives, dataset.iter_corpus, encoder,
                             MiningConfig(top_k=10, skip=3), name="toy", workdir=tmp_path / "work")
    assert set(mined) == set(dataset.queries)
    for qid, cand in mined.items():
        assert not set(cand.doc_ids) & set(positives[qid])
        assert len(cand.doc_ids) == 10 and cand.scores == sorted(cand.scores, reverse=True)
        assert skipped[qid].doc_ids == cand.doc_ids[3:]
        assert set(cand.positive_scores) == set(positives[qid])
        for n in (1, 3):
            picked = pick_negatives(cand, positives[qid][0], MiningConfig(negatives=n), random.Random(0))
            assert picked == cand.doc_ids[:n]
        sampled = pick_negatives(cand, positives[qid][0], MiningConfig(negatives=4, sampling="random"),
                                 random.Random(0))
        assert len(set(sampled)) == 4 and set(sampled) <= set(cand.doc_ids)
        assert pick_negatives(cand, positives[qid][0], MiningConfig(negatives=11), random.Random(0)) is None
        # a ratio of 0.5 of the positive's score leaves only candidates scoring at most that
        limit = 0.5 * cand.positive_scores[positives[qid][0]]
        filtered = pick_negatives(cand, positives[qid][0], MiningConfig(negatives=1, max_score_ratio=0.5),
                                  random.Random(0))
        expected = [d for d, s in zip(cand.doc_ids, cand.scores) if s <= limit]
        assert filtered == (expected[:1] if expected else None)
    # the embeddings and the Flat index are cached where `retromem eval beir` would put them
    assert list((tmp_path / "work" / "toy").glob("*/index-Flat-ip/index.json"))


def test_a_model_of_its_own_code_is_fine_tuned_only_when_its_code_is_trusted(tmp_path, tiny_remote_model_dir, toy_beir):
    with pytest.raises(ConfigError, match="own Python code.*give --trust-remote-code"):
        build_model(_config(tmp_path, tiny_remote_model_dir, toy_beir))
    model, settings = build_model(_config(tmp_path, tiny_remote_model_dir, toy_beir, trust_remote_code=True))
    assert type(model[0].auto_model).__name__ == "TinyRemoteModel" and settings["pooling"] == "cls"


def test_beir_examples_pair_every_relevant_judgment_with_mined_negatives(tmp_path, tiny_model_dir, toy_beir):
    config = _config(tmp_path, tiny_model_dir, toy_beir, hard_negatives=2)
    _, settings = build_model(config)
    examples, report = build_examples(config, settings)
    dataset = load_beir(str(toy_beir), split="train")
    texts = {p.id: p.full_text() for p in dataset.iter_corpus()}
    assert report.pairs == report.examples == len(examples) == 32
    assert all(list(e) == ["anchor", "positive", "negative_1", "negative_2"] for e in examples)
    for example in examples:
        qid = next(q for q, t in dataset.queries.items() if t == example["anchor"])
        positive_texts = {texts[d] for d in relevant_docs(dataset.qrels)[qid]}
        assert example["positive"] in positive_texts  # title + " " + text, as the encoder formats passages
        assert not {example["negative_1"], example["negative_2"]} & positive_texts
    assert texts["d0-0"].startswith("cat ")


def test_finetune_trains_saves_and_ranks_positives_higher(tmp_path, tiny_st_dir, toy_beir):
    # a sentence-transformers folder with mean pooling (a tiny random BERT's [CLS] carries too little of
    # its input to learn from in a few steps): its pooling and normalisation carry over
    config = _config(tmp_path, tiny_st_dir, toy_beir, max_steps=40, save_steps=20, query_prefix="query: ")
    before = _mrr(tiny_st_dir, toy_beir, query_prefix="query: ")
    final = finetune(config)

    info = json.loads((final / "finetune_run.json").read_text())
    assert info["global_step"] == 40 and math.isfinite(info["train_loss"])
    assert info["model_settings"]["pooling"] == "mean" and info["model_settings"]["normalize"] is True
    assert info["model_settings"]["max_length"] == 64
    assert (tmp_path / "run" / "checkpoint-40" / "trainer_state.json").exists()
    assert not list((tmp_path / "run").glob("checkpoint-*/training_args.bin"))  # no pickles

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(final), device="cpu")
    encoder = Encoder(EncoderConfig(model=str(final), precision="fp32"))
    assert encoder.pooling == "mean" and encoder.normalize and encoder.query_prefix == "query: "
    texts = ["red cat", "a story about a quiet piano and many people"]
    np.testing.assert_allclose(st.encode_query(texts), encoder.encode_queries(texts), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(texts), encoder.encode_passages(texts), atol=1e-5)

    after = _mrr(final, toy_beir)
    assert after > before + 0.2, (before, after)  # about 0.57 -> 0.96 over seeds


def test_finetune_resumes_from_the_newest_complete_checkpoint(tmp_path, tiny_model_dir, toy_beir):
    config = _config(tmp_path, tiny_model_dir, toy_beir, max_steps=4, save_steps=2, hard_negatives=0)
    finetune(config)
    run = tmp_path / "run"
    # simulate a crash after step 2: the step-4 checkpoint and the final model never got written,
    # and a half-written checkpoint (no trainer_state.json) was left behind
    shutil.rmtree(run / "checkpoint-4")
    shutil.rmtree(run / "final")
    (run / "checkpoint-6").mkdir()
    final = finetune(config)
    info = json.loads((final / "finetune_run.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-2") and info["global_step"] == 4
    assert not (run / "checkpoint-6").exists()
    assert info["examples"]["examples"] == 32  # the tuples were reused, not mined again
    # a bare Hugging Face folder gets [CLS] pooling and normalisation, and the saved folder says so
    encoder = Encoder(EncoderConfig(model=str(final)))
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("cls", True, 128)
    # a crash between the last checkpoint and final/: the checkpoint becomes final/, no step is added
    shutil.rmtree(run / "final")
    final = finetune(config)
    info = json.loads((final / "finetune_run.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-4") and info["global_step"] == 4
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # the same command once more: final/ is already this run's result
    stamp = (final / "finetune_run.json").stat().st_mtime_ns
    assert finetune(config) == final and (final / "finetune_run.json").stat().st_mtime_ns == stamp
    with pytest.raises(RetromemError, match="already holds checkpoints"):
        finetune(_config(tmp_path, tiny_model_dir, toy_beir, max_steps=6, save_steps=2, hard_negatives=0,
                         resume="never"))


def test_jsonl_records_are_read_and_completed_with_mined_negatives(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    records = [{"query": f"{w} {t}", "positive": f"the {t} is {w}", "negatives": [f"the {t} is plain"]}
               for t, w in zip(TOPICS[:8], WORDS[:8])]
    records += [{"query": f"{w} {t}", "positive": f"a {w} {t} story"} for t, w in zip(TOPICS[8:], WORDS[8:])]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = FinetuneConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), jsonl=[str(data)],
                            hard_negatives=2, mine_top_k=5, precision="fp32", mining_workdir=str(tmp_path / "work"),
                            show_progress=False)
    _, settings = build_model(config)
    examples, report = build_examples(config, settings)
    assert len(examples) == 16 and report.mined_queries == 16
    for record, example in zip(records, examples):
        negatives = [example["negative_1"], example["negative_2"]]
        assert example["anchor"] == record["query"] and example["positive"] == record["positive"]
        assert record["positive"] not in negatives and len(set(negatives)) == 2
        if "negatives" in record:
            assert negatives[0] == record["negatives"][0]  # given negatives come first


def test_mined_jsonl_negatives_exclude_every_positive_of_the_query_text_and_the_text_itself(tmp_path, tiny_model_dir):
    # "red cat" has two records with different positives, and another record's positive is the text "red cat":
    # none of the three may be mined as its negative. Asking for every other text of the pool makes the
    # mined set exact, whatever the (random) model ranks first.
    records = [{"query": "red cat", "positive": "the cat is red"}, {"query": "red cat", "positive": "a red cat story"},
               {"query": "blue dog", "positive": "red cat"}]
    records += [{"query": f"{w} {t}", "positive": f"the {t} is {w}"} for t, w in zip(TOPICS[2:10], WORDS[2:10])]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    pool = {r["positive"] for r in records}
    forbidden = {"the cat is red", "a red cat story", "red cat"}
    config = FinetuneConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), jsonl=[str(data)],
                            hard_negatives=len(pool - forbidden), mine_top_k=len(pool), precision="fp32",
                            mining_workdir=str(tmp_path / "work"), show_progress=False)
    _, settings = build_model(config)
    examples, _ = build_examples(config, settings)
    for example in (e for e in examples if e["anchor"] == "red cat"):
        mined = {v for k, v in example.items() if k.startswith("negative_")}
        assert mined == pool - forbidden
    assert sum(e["anchor"] == "red cat" for e in examples) == 2


def test_a_jsonl_file_edited_in_place_is_not_taken_for_the_finished_run(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    records = [{"query": f"{w} {t}", "positive": f"the {t} is {w}"} for t, w in zip(TOPICS, WORDS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = FinetuneConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), jsonl=[str(data)],
                            hard_negatives=0, max_steps=1, batch_size=4, precision="fp32", show_progress=False,
                            mining_workdir=str(tmp_path / "work"))
    final = finetune(config)
    stamp = (final / "finetune_run.json").stat().st_mtime_ns
    assert finetune(config) == final and (final / "finetune_run.json").stat().st_mtime_ns == stamp
    data.write_text("".join(json.dumps({**r, "positive": r["positive"] + " indeed"}) + "\n" for r in records))
    with pytest.raises(MismatchError, match="training data"):  # not "nothing to do": its checkpoint is refused
        finetune(config)


@pytest.mark.parametrize("line, message", [
    ('{"query": "q", "positive": "p"', "malformed JSON"),
    ('{"query": "q"}', "missing 'positive'"),
    ('{"query": "", "positive": "p"}', "'query' must be a non-empty string"),
    ('{"query": "q", "positive": "p", "negatives": "n"}', "'negatives' a list"),
    ('{"query": "q", "positive": "p", "negative": "n", "negatives": ["m"]}', "not both"),
    ('{"query": "q", "positive": "p", "negative": "p"}', "same text as the positive"),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"query": "fine", "positive": "also fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_jsonl_examples([data])
    assert str(err.value).startswith(f"{data}:3: ")


def test_empty_jsonl_and_bad_options_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no training records"):
        read_jsonl_examples([empty])
    with pytest.raises(RetromemError, match="no training data"):
        FinetuneConfig().validate()
    with pytest.raises(RetromemError, match=r"bm25\+dense"):
        FinetuneConfig(beir="scifact", negatives_source="splade").validate()
    with pytest.raises(RetromemError, match="raise --mine-top-k"):
        FinetuneConfig(beir="scifact", hard_negatives=5, mine_skip=28, mine_top_k=30).validate()
    with pytest.raises(RetromemError, match="unknown loss"):
        FinetuneConfig(beir="scifact", loss="triplet").validate()


def _twin_beir(root: Path, toy: Path) -> Path:
    """The toy set plus, per query, the query's own text in the corpus under its id (as in Quora or
    ArguAna), and a second query id with the same text as q0 judged against only one of q0's documents."""
    shutil.copytree(toy, root)
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    with open(root / "corpus.jsonl", "a") as handle:
        for q in queries:
            handle.write(json.dumps({"_id": q["_id"], "title": "", "text": q["text"]}) + "\n")
        handle.write(json.dumps({"_id": "twin-text", "title": "", "text": queries[1]["text"].upper() + "  "}) + "\n")
    with open(root / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q0-again", "text": queries[0]["text"]}) + "\n")
    with open(root / "qrels" / "train.tsv", "a") as handle:
        handle.write("q0-again\td0-0\t1\n")
    return root


def test_mining_never_returns_the_query_itself_nor_positives_of_the_same_text(tmp_path, tiny_model_dir, toy_beir):
    data = _twin_beir(tmp_path / "twins", toy_beir)
    config = _config(tmp_path, tiny_model_dir, data, hard_negatives=3, mine_top_k=12)
    _, settings = build_model(config)
    examples, _ = build_examples(config, settings)
    dataset = load_beir(str(data), split="train")
    texts = {p.id: p.full_text() for p in dataset.iter_corpus()}
    q0_docs = {texts["d0-0"], texts["d0-1"]}
    for example in examples:
        negatives = {example[f"negative_{i}"] for i in (1, 2, 3)}
        assert example["anchor"].lower() not in {n.strip().lower() for n in negatives}  # neither twin
        if example["anchor"] == dataset.queries["q0"]:  # q0 and q0-again: both of q0's documents are positives
            assert not negatives & q0_docs
    assert sum(e["anchor"] == dataset.queries["q0"] for e in examples) == 3


def test_a_changed_starting_model_or_beir_file_makes_another_run(tmp_path, tiny_model_dir, toy_beir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "data"
    shutil.copytree(toy_beir, data)
    config = _config(tmp_path, model, data, max_steps=2, hard_negatives=0)
    final = finetune(config)
    first = json.loads((final / "finetune_run.json").read_text())
    assert finetune(config) == final  # nothing to do

    from transformers import AutoModel

    retrained = AutoModel.from_pretrained(model)
    for parameter in retrained.parameters():
        parameter.data.add_(0.01)
    retrained.save_pretrained(model)  # the same folder, pretrained further
    shutil.rmtree(tmp_path / "run")
    final = finetune(config)
    second = json.loads((final / "finetune_run.json").read_text())
    assert second["input_digests"]["model"] != first["input_digests"]["model"]
    assert second["model_settings"]["fingerprint"] == second["input_digests"]["model"]

    # a qrels file edited in place: the finished run is not reused, nor are its checkpoints
    qrels = data / "qrels" / "train.tsv"
    qrels.write_text("\n".join(line for line in qrels.read_text().splitlines() if not line.startswith("q7\t")) + "\n")
    with pytest.raises(MismatchError, match="training data"):
        finetune(config)
    shutil.rmtree(tmp_path / "run")
    info = json.loads((finetune(config) / "finetune_run.json").read_text())
    assert info["examples"]["pairs"] == 30  # q7's two pairs are gone


def test_a_finished_run_is_extended_by_more_epochs_and_refuses_fewer(tmp_path, tiny_model_dir, toy_beir):
    # 32 pairs, batch 8: 4 steps an epoch
    config = _config(tmp_path, tiny_model_dir, toy_beir, max_steps=-1, epochs=0.5, save_steps=2, hard_negatives=0)
    info = json.loads((finetune(config) / "finetune_run.json").read_text())
    assert info["global_step"] == 2
    longer = _config(tmp_path, tiny_model_dir, toy_beir, max_steps=-1, epochs=1.0, save_steps=2, hard_negatives=0)
    info = json.loads((finetune(longer) / "finetune_run.json").read_text())
    assert info["global_step"] == 4 and info["resumed_from"].endswith("checkpoint-2")
    assert info["config"]["epochs"] == 1.0
    shutil.rmtree(tmp_path / "run" / "final")
    with pytest.raises(RetromemError, match="past this run's 0.5"):
        finetune(config)
    with pytest.raises(RetromemError, match="past this run's 3 steps"):
        finetune(_config(tmp_path, tiny_model_dir, toy_beir, max_steps=3, save_steps=2, hard_negatives=0))
    # max_steps that grow: trains on from the last checkpoint
    info = json.loads((finetune(_config(tmp_path, tiny_model_dir, toy_beir, max_steps=6, save_steps=2,
                                        hard_negatives=0)) / "finetune_run.json").read_text())
    assert info["global_step"] == 6 and info["resumed_from"].endswith("checkpoint-4")


def test_resuming_refuses_other_optimisation_settings_and_foreign_checkpoints(tmp_path, tiny_model_dir, toy_beir):
    config = _config(tmp_path, tiny_model_dir, toy_beir, max_steps=4, save_steps=2, hard_negatives=0)
    finetune(config)
    run = tmp_path / "run"
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoint-4")
    with pytest.raises(MismatchError, match=r"weight_decay: 0.0\d* in that run, 0.5 now"):
        finetune(_config(tmp_path, tiny_model_dir, toy_beir, max_steps=4, save_steps=2, hard_negatives=0,
                         weight_decay=0.5))
    # an explicit checkpoint of another run is checked against that run's settings, beside it
    other = dict(output_dir=str(tmp_path / "other"), max_steps=4, save_steps=2, hard_negatives=0,
                 resume=str(run / "checkpoint-2"))
    with pytest.raises(MismatchError, match="learning_rate"):
        finetune(_config(tmp_path, tiny_model_dir, toy_beir, **{**other, "learning_rate": 5e-4}))
    info = json.loads((finetune(_config(tmp_path, tiny_model_dir, toy_beir, **other)) / "finetune_run.json")
                      .read_text())
    assert info["resumed_from"].endswith("run/checkpoint-2") and info["global_step"] == 4
    assert (run / "checkpoint-2").exists()  # the other run's checkpoints are left alone
    # into a folder that holds checkpoints of its own: refused rather than deleting them
    with pytest.raises(RetromemError, match="of another run"):
        finetune(_config(tmp_path, tiny_model_dir, toy_beir, **{**other, "max_steps": 6}))


def test_jsonl_negatives_that_are_positives_of_the_same_query_or_repeat_are_refused(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"query": "red cat", "positive": "A", "negatives": ["B"]}) + "\n"
                    + json.dumps({"query": "red cat", "positive": "B"}) + "\n")
    with pytest.raises(DataError, match=r"'B' is a positive of the same query in .*train.jsonl, line 2") as err:
        read_jsonl_examples([data])
    assert str(err.value).startswith(f"{data}:1: ")
    data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["x", "y", "x"]}) + "\n")
    with pytest.raises(DataError, match="'x' is given twice"):
        read_jsonl_examples([data])


def test_dropped_pairs_are_reported_and_the_hint_names_the_score_ratio(tmp_path, tiny_model_dir, toy_beir, caplog):
    config = _config(tmp_path, tiny_model_dir, toy_beir, hard_negatives=2, mine_max_score_ratio=1e-6)
    _, settings = build_model(config)
    with pytest.raises(RetromemError, match="raise --mine-max-score-ratio"):
        build_examples(config, settings)


def test_cached_mnrl_trains_as_mnrl_does_and_a_mining_model_gives_the_tuples(tmp_path, tiny_model_dir, tiny_st_dir,
                                                                             toy_beir):
    # GradCache computes the same loss in mini-batches: the first step's loss is MNRL's (without
    # dropout, whose masks the two draw differently)
    from transformers import AutoConfig, AutoModel

    model = tmp_path / "no-dropout"
    config = AutoConfig.from_pretrained(tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModel.from_pretrained(tiny_model_dir, config=config).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_model_dir) / name, model / name)
    common = dict(max_steps=1, hard_negatives=1, mining_model=str(tiny_st_dir), warmup_ratio=0.0)
    plain = finetune(_config(tmp_path / "plain", model, toy_beir, **common))
    cached = finetune(_config(tmp_path / "cached", model, toy_beir, loss="cached-mnrl", mini_batch_size=3, **common))
    plain_info = json.loads((plain / "finetune_run.json").read_text())
    cached_info = json.loads((cached / "finetune_run.json").read_text())
    assert cached_info["config"]["loss"] == "cached-mnrl"
    assert cached_info["train_loss"] == pytest.approx(plain_info["train_loss"], rel=1e-5)
    # the tuples came from the mining model (mean pooling), not from the [CLS] model being trained
    assert plain_info["config"]["mining_model"] == str(tiny_st_dir)
    examples_file = tmp_path / "plain" / "run" / "train_examples.jsonl"
    assert examples_file.read_text() == (tmp_path / "cached" / "run" / "train_examples.jsonl").read_text()
    own = build_examples(_config(tmp_path / "own", model, toy_beir, hard_negatives=1),
                         build_model(_config(tmp_path / "own", model, toy_beir))[1])[0]
    mined = [json.loads(line) for line in examples_file.read_text().splitlines()]
    assert [e["negative_1"] for e in own] != [e["negative_1"] for e in mined]
