"""Token memories: codecs (round trips within their stated errors), the sharded store (exact random access
across shards, atomic shards, resuming, reading while shards are added), building (layers, dropping, merging,
truncation, empty passages), refusals of another encoder/layer/codec, and MaxSim reranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from retromem.data.passage import Passage
from retromem.errors import ConfigError, MismatchError, MissingDataError
from retromem.index import memory_store, token_memories
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.memory_codecs import codec_from_json, make_codec, parse_codec_spec
from retromem.index.memory_store import MemoryStore, require_memory, write_shard
from retromem.index.token_memories import MemoryConfig, build_memories, condense, merge_neighbours
from retromem.index.token_states import passage_layer_states
from retromem.retrieve.memory_rerank import MemoryReranker, RerankConfig, brute_force_maxsim, maxsim_scores

from .conftest import make_beir_corpus


def structured(n=3000, d=32, seed=0):
    """Vectors like hidden states: a low-rank part, an offset (one-signed dimensions) and noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, d))
    x = rng.normal(size=(n, 8)) @ basis + 0.3 * rng.normal(size=(n, d)) + rng.normal(size=d) * 2
    return x.astype(np.float32)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder(EncoderConfig(model=str(tiny_model_dir), precision="fp32", device="cpu", batch_size=4))


@pytest.fixture(scope="module")
def passages():
    return [Passage(d["_id"], d["text"], d["title"]) for d in make_beir_corpus(23, seed=3)]


# codecs
def test_fp32_and_fp16_round_trip_within_their_stated_error(tmp_path):
    x = structured()
    fp32 = make_codec("fp32", 32)
    assert np.array_equal(fp32.decode(fp32.encode(x)), x)
    fp16 = make_codec("fp16", 32)
    back = fp16.decode(fp16.encode(x))
    assert fp16.code_size == 64
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -11 + 6e-8)


def test_int8_round_trip_within_a_step_of_its_trained_ranges(tmp_path):
    x = structured()
    codec = make_codec("int8", 32).train(x)
    vmin, vdiff = codec.ranges()
    back = codec.decode(codec.encode(x))
    assert codec.code_size == 32
    assert np.all(np.abs(back - x) <= vdiff / 255 + 1e-5)
    codec.save_arrays(tmp_path)
    again = codec_from_json(json.loads(json.dumps(codec.to_json())), tmp_path)
    assert np.array_equal(again.decode(codec.encode(x)), back)


def test_binary_calibration_keeps_the_centred_norm_and_the_signs(tmp_path):
    x = structured(d=40)
    codec = make_codec("binary", 40).train(x)
    codes = codec.encode(x)
    assert codes.shape == (len(x), 40 // 8 + 2) and codes.dtype == np.uint8
    back = codec.decode(codes)
    centred, back_centred = x - codec.mean, back - codec.mean
    assert np.allclose(np.linalg.norm(back_centred, axis=1), np.linalg.norm(centred, axis=1), rtol=2.0 ** -10)
    assert np.array_equal(back_centred > 0, centred > 0)
    assert cosines(x, back).mean() > 0.8  # centring: the offset dimensions are not spent on their constant sign
    codec.save_arrays(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec-mean.npy", "codec-spread.npy"]
    again = codec_from_json(codec.to_json(), tmp_path)
    assert np.array_equal(again.decode(codes), back)


@pytest.mark.parametrize("name,params,cosine", [("pq", {"m": 8, "nbits": 6}, 0.95), ("opq", {"m": 8, "nbits": 6,
                                                "niter": 4}, 0.95), ("rq", {"m": 4, "nbits": 6}, 0.9)])
def test_vector_quantisers_round_trip_to_a_close_vector_and_reload(tmp_path, name, params, cosine):
    x = structured()
    codec = make_codec(name, 32, **params).train(x)
    assert codec.code_size == math.ceil(params["m"] * params["nbits"] / 8)
    back = codec.decode(codec.encode(x))
    assert cosines(x, back).mean() >= cosine
    codec.save_arrays(tmp_path)
    again = codec_from_json(codec.to_json(), tmp_path)
    assert np.array_equal(again.decode(codec.encode(x)), back)


def test_pq_is_sized_by_bytes_per_token():
    assert make_codec("pq", 384, bytes=84).params == {"m": 96, "nbits": 7}
    assert make_codec("pq", 384, bytes=64).code_size == 64
    assert make_codec("rq", 384, bytes=32).code_size == 32
    assert parse_codec_spec("pq:m=96,nbits=7") == ("pq", {"m": 96, "nbits": 7})


def test_a_size_no_setting_reaches_is_refused_naming_the_closest():
    with pytest.raises(ConfigError, match=r"m=100 does not divide the dimension 384.*m=96 \(96 bytes\) or m=128"):
        make_codec("pq", 384, m=100)
    with pytest.raises(ConfigError, match="at least 1"):
        make_codec("pq", 384, bytes=0)
    with pytest.raises(ConfigError, match="takes train_size"):
        make_codec("binary", 384, bytes=20)
    with pytest.raises(ConfigError, match="one of fp32"):
        make_codec("zip", 384)


# building and the store
def reference(encoder, passages, layer, codec):
    states = passage_layer_states(encoder, passages, layer)
    return {p.id: (codec.decode(codec.encode(s)), t) for p, s, t in zip(passages, states.states, states.token_ids)}


def test_random_access_returns_exactly_what_was_written_across_shards(encoder, passages, tmp_path):
    store = build_memories(passages, encoder, MemoryConfig(layer=1, codec="int8", shard_size=5), tmp_path / "m")
    assert len(store.shards) == 5 and store.complete and len(store) == len(passages)
    assert store.ids() == [p.id for p in passages]
    expected = reference(encoder, passages, 1, store.codec)
    order = list(np.random.default_rng(0).permutation([p.id for p in passages]))
    for memory in store.gather(order):
        vectors, tokens = expected[memory.passage_id]
        assert np.array_equal(memory.vectors, vectors)
        assert np.array_equal(memory.token_ids, tokens)
        assert memory.spans.tolist() == [[i, i + 1] for i in range(len(tokens))]
    assert (tmp_path / "m" / "lookup-hash.npy").exists()
    reopened = MemoryStore.open(tmp_path / "m")
    assert reopened.meta.details["layer"] == 1 and reopened.meta.details["tokens"] == store.num_tokens
    with pytest.raises(MissingDataError, match="'nope' is not in the token memory"):
        reopened.gather(["doc0", "nope"])


def test_layer_zero_is_the_embedding_output_and_the_last_the_pooled_states(encoder, passages):
    last = encoder.layer_states(passages[:3], -1)
    pooled = encoder.encode_passages(passages[:3])
    assert np.allclose(np.stack([s.mean(0) for s, _ in last]) if encoder.pooling == "mean"
                       else np.stack([s[0] for s, _ in last]), pooled, atol=1e-5)
    zero = encoder.layer_states(passages[:1], 0)[0][0]
    with_embeddings = encoder.model.embeddings(input_ids=__import__("torch").tensor(last[0][1][None]))
    assert np.allclose(zero, with_embeddings[0].detach().numpy(), atol=1e-5)


def test_a_write_killed_halfway_leaves_whole_shards_only_and_a_rerun_resumes(encoder, passages, tmp_path,
                                                                              monkeypatch):
    real = memory_store.write_shard
    calls = []

    def dying(path, number, *args, **kwargs):
        calls.append(number)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third shard is being written
        return real(path, number, *args, **kwargs)

    monkeypatch.setattr(token_memories, "write_shard", dying)
    config = MemoryConfig(layer=2, codec="binary", shard_size=6)
    with pytest.raises(KeyboardInterrupt):
        build_memories(passages, encoder, config, tmp_path / "m")
    partial = MemoryStore.open(tmp_path / "m")
    assert not partial.complete and len(partial.shards) == 2 and len(partial) == 12
    assert not (tmp_path / "m" / "lookup-hash.npy").exists()
    assert all(not p.name.startswith(".") for p in (tmp_path / "m" / "shards").iterdir())
    assert partial.gather(["doc3"])[0].passage_id == "doc3"  # finished shards are readable

    calls.clear()
    monkeypatch.setattr(token_memories, "write_shard", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    resumed = build_memories(passages, encoder, config, tmp_path / "m")
    assert calls == [2, 3] and resumed.complete and len(resumed) == len(passages)
    fresh = build_memories(passages, encoder, config, tmp_path / "fresh")
    ids = [p.id for p in passages]
    for a, b in zip(resumed.gather(ids), fresh.gather(ids)):
        assert np.array_equal(a.vectors, b.vectors) and np.array_equal(a.token_ids, b.token_ids)


def test_a_store_is_readable_while_another_writer_adds_shards(encoder, passages, tmp_path):
    store = build_memories(passages[:10], encoder, MemoryConfig(codec="fp16", shard_size=5), tmp_path / "m")
    reader = MemoryStore.open(tmp_path / "m")
    codes = store.codec.encode(np.ones((3, encoder.dim), np.float32))
    write_shard(tmp_path / "m", 2, ["extra"], [codes], [np.array([1, 2, 3])], None, store.codec.code_size)
    with pytest.raises(MissingDataError):
        reader.gather(["extra"])
    reader.refresh()
    assert len(reader.shards) == 3
    assert np.array_equal(reader.gather(["extra"])[0].vectors, np.ones((3, encoder.dim), np.float32))
    assert reader.gather(["doc1"])[0].passage_id == "doc1"  # the lookup table still covers the first two


def test_a_memory_of_another_encoder_layer_or_codec_is_refused(encoder, passages, tmp_path, tiny_st_dir):
    store = build_memories(passages[:6], encoder, MemoryConfig(layer=1, codec="fp16", shard_size=4), tmp_path / "m")
    require_memory(store, encoder.metadata(), 1, "fp16")
    other = Encoder(EncoderConfig(model=str(tiny_st_dir), device="cpu"))
    with pytest.raises(MismatchError, match="different encoder"):
        require_memory(store, other.metadata())
    with pytest.raises(MismatchError, match="after layer 1, not layer 2"):
        require_memory(store, layer=2)
    with pytest.raises(MismatchError, match="codec fp16, not binary"):
        require_memory(store, codec=make_codec("binary", encoder.dim))
    with pytest.raises(MismatchError, match="other options.*layer: 1 then, 2 now"):
        build_memories(passages[:6], encoder, MemoryConfig(layer=2, codec="fp16", shard_size=4), tmp_path / "m")
    with pytest.raises(MismatchError, match="different encoder"):
        build_memories(passages[:6], other, MemoryConfig(layer=1, codec="fp16", shard_size=4), tmp_path / "m")
    with pytest.raises(MismatchError, match="different encoder"):
        MemoryReranker(store, other)


def test_bad_input_is_refused_or_reported(encoder, passages, tmp_path, caplog):
    with pytest.raises(ConfigError, match="layer .*3 is out of range: .* has 2 layers"):
        build_memories(passages, encoder, MemoryConfig(layer=3), tmp_path / "a")
    for ratio in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"merge_ratio \(--merge-ratio\)"):
            MemoryConfig(merge_ratio=ratio)
    short = Encoder(EncoderConfig(model=str(encoder.model_path), precision="fp32", device="cpu", max_length=8))
    odd = [Passage("empty", ""), Passage("long", "protein " * 50), Passage("fine", "cell gene")]
    with caplog.at_level("WARNING"):
        store = build_memories(odd, short, MemoryConfig(codec="fp32"), tmp_path / "b")
    assert store.meta.details["truncated"] == 1 and store.meta.details["empty"] == 1
    assert "1 passage(s) were longer than the encoder's 8 tokens" in caplog.text
    assert "1 passage(s) are empty" in caplog.text
    long, empty = store.gather(["long", "empty"])
    assert len(long) == 8 and len(empty) == 2  # [CLS] [SEP]
    dropped = build_memories(odd, short, MemoryConfig(codec="fp32", drop_special=True), tmp_path / "c")
    assert len(dropped.gather(["empty"])[0]) == 0


def test_dropping_and_merging_keep_spans_of_the_original_positions(encoder, tokenizer):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, 16)).astype(np.float32)
    ids = np.arange(37, dtype=np.int32)
    spans = np.stack([ids, ids + 1], axis=1)
    for ratio in (0.9, 0.5, 0.25, 0.01):
        vectors, tokens, merged = merge_neighbours(x, ids, spans, max(1, math.ceil(ratio * 37)))
        assert len(vectors) == max(1, math.ceil(ratio * 37))
        assert merged[0, 0] == 0 and merged[-1, 1] == 37 and np.all(merged[1:, 0] == merged[:-1, 1])
        sizes = merged[:, 1] - merged[:, 0]
        means = np.stack([x[s:e].mean(0) for s, e in merged])  # the merged vector is its tokens' mean
        assert np.allclose(vectors, means, atol=1e-5) and sizes.sum() == 37
    keep = np.ones(37, dtype=bool)
    keep[[0, 5, 6, 36]] = False
    vectors, tokens, kept = condense(x, ids, keep, 1.0)
    assert kept[:5].tolist() == [[1, 2], [2, 3], [3, 4], [4, 5], [7, 8]] and len(vectors) == 33
    config = MemoryConfig(drop_special=True, drop_stopwords=True)
    drop = token_memories.TokenFilter.for_tokenizer(tokenizer, config)
    text_ids = np.array(tokenizer("The cell, and the gene!")["input_ids"])
    kept_tokens = tokenizer.convert_ids_to_tokens(text_ids[drop.keep(text_ids)].tolist())
    assert kept_tokens == ["cell", "gene"]


def test_merged_memory_stores_spans_and_fewer_vectors(encoder, passages, tmp_path):
    store = build_memories(passages, encoder, MemoryConfig(codec="fp32", merge_ratio=0.5, shard_size=8),
                           tmp_path / "m")
    full = reference(encoder, passages, -1, store.codec)
    for memory in store.gather([p.id for p in passages]):
        n = len(full[memory.passage_id][1])
        assert len(memory) == math.ceil(n / 2)
        assert memory.spans[0, 0] == 0 and memory.spans[-1, 1] == n
    assert store.meta.details["kept_tokens"] < store.meta.details["tokens"]


# reranking
def test_rerank_from_fp32_memory_equals_brute_force_maxsim(encoder, passages, tmp_path):
    store = build_memories(passages, encoder, MemoryConfig(codec="fp32", shard_size=7), tmp_path / "m")
    reranker = MemoryReranker(store, encoder, RerankConfig(rerank_depth=10))
    queries = {"q1": "protein cell receptor", "q2": "heart blood"}
    first = {q: {p.id: float(-i) for i, p in enumerate(passages)} for q in queries}
    states = reranker.query_states(queries)
    direct = {p.id: s for p, (s, _) in zip(passages, encoder.layer_states(passages, -1))}
    maxsim = reranker.maxsim(first, queries)
    for q in queries:
        top = [p.id for p in passages[:10]]
        assert list(maxsim[q]) == top
        expected = brute_force_maxsim(states[q], [direct[d] for d in top])
        assert np.allclose([maxsim[q][d] for d in top], expected, atol=1e-5)
    reranked = reranker.rerank(first, queries)
    for q in queries:
        order = list(reranked[q])
        assert sorted(order[:10], key=lambda d: -maxsim[q][d]) == order[:10]
        assert order[10:] == [p.id for p in passages[10:]]  # below the depth: the first stage's order
    weighted = MemoryReranker(store, encoder, RerankConfig(rerank_depth=10, rerank_weight=0.5)).rerank(first, queries)
    for q in queries:
        for doc in [p.id for p in passages[:10]]:
            assert weighted[q][doc] == pytest.approx(maxsim[q][doc] + 0.5 * first[q][doc], abs=1e-6)
    assert maxsim_scores(states["q1"], store, []) == []


# the commands
def test_index_memory_then_eval_and_search_rerank_from_it(tiny_beir, tiny_model_dir, tmp_path, capsys, isolated_env,
                                                           restore_logging):
    from retromem.cli import main

    tiny = ["--precision", "fp32", "--device", "cpu"]
    memory = tmp_path / "mem"
    assert main(["index", "memory", "--corpus", str(tiny_beir), "--model", str(tiny_model_dir), "--codec", "binary",
                 "--merge-ratio", "0.5", "--shard-size", "16", "--output", str(memory), *tiny]) == 0
    out = capsys.readouterr().out
    assert "stored 40 passages" in out and "(layer 2, binary" in out
    store = MemoryStore.open(memory)
    assert store.complete and len(store.shards) == 3 and store.meta.details["options"]["merge_ratio"] == 0.5
    assert main(["eval", "beir", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir), "--workdir",
                 str(tmp_path / "work"), "--rerank", "memory", "--memory", str(memory), "--rerank-depth", "5",
                 "--output", str(tmp_path / "res"), *tiny]) == 0
    out = capsys.readouterr().out
    assert "+ memory rerank (binary, top 5, w=0)" in out
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert "NDCG@10" in json.dumps(results)
    run_file = next((tmp_path / "work").rglob("*-memory-binary-d5-w0.trec"))
    assert main(["eval", "beir", "--dataset", str(tiny_beir), "--run", str(run_file), "--rerank", "memory",
                 "--memory", str(memory), "--rerank-weight", "0.5", "--output", str(tmp_path / "res2")]) == 0
    assert "w=0.5" in capsys.readouterr().out


def test_a_finished_memory_is_reused_and_one_of_another_corpus_refused(encoder, passages, tmp_path):
    config = MemoryConfig(codec="fp16", shard_size=8)
    first = build_memories(passages, encoder, config, tmp_path / "m")
    assert not first.reused
    again = build_memories(passages, encoder, config, tmp_path / "m")
    assert again.reused and again.ids() == first.ids()
    changed = [Passage(p.id, p.text + " more", p.title) for p in passages]
    with pytest.raises(MismatchError, match="another corpus"):
        build_memories(changed, encoder, config, tmp_path / "m")
