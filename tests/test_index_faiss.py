"""FAISS indexes over stored embeddings: factories, exactness of Flat, saving, mismatches, the GPU switch."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from retromem.data.beir import iter_corpus, load_beir
from retromem.errors import MismatchError, MissingDataError, RetromemError
from retromem.index import faiss_index
from retromem.index.embeddings import EmbeddingSet, encode_corpus
from retromem.index.encoder import Encoder, EncoderConfig
from retromem.index.faiss_index import DenseIndex, IndexConfig, build_index, use_gpu
from retromem.io import write_json_atomic
from retromem.retrieve.dense import DenseSearcher

N, DIM, K = 600, 32, 10


def unit_rows(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def random_embeddings(tmp_path_factory) -> EmbeddingSet:
    """600 random unit vectors stored as an embeddings folder (the layout `encode_corpus` writes)."""
    folder = tmp_path_factory.mktemp("random-emb")
    vectors = unit_rows(np.random.default_rng(0), N)
    np.save(folder / "embeddings.npy", vectors)
    (folder / "ids.txt").write_text("".join(f"p{i}\n" for i in range(N)))
    write_json_atomic(folder / "meta.json", {"model": "random", "fingerprint": "0" * 16, "pooling": "mean",
                                             "normalize": True, "max_length": 8, "passage_prefix": "", "dim": DIM,
                                             "count": N, "dtype": "float32", "corpus": None})
    return EmbeddingSet.load(folder)


@pytest.fixture(scope="module")
def queries():
    return unit_rows(np.random.default_rng(1), 12)


def brute_force(vectors, queries, k, metric="ip"):
    """Top-k rows and scores by numpy (L2: negated squared distances, so that higher is better)."""
    scores = queries @ vectors.T if metric == "ip" else -((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch):
    """Run as on a CPU-only machine, whatever FAISS build is installed."""
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)


# ---------------------------------------------------------------- building and searching

@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force(random_embeddings, queries, tmp_path, metric):
    index = build_index(random_embeddings.path, tmp_path / "flat", IndexConfig(factory="Flat", metric=metric))
    scores, ids = index.search(queries, K)
    expected_scores, expected_rows = brute_force(np.asarray(random_embeddings.vectors), queries, K, metric)
    assert ids == [[f"p{r}" for r in row] for row in expected_rows]
    if metric == "ip":
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    else:
        np.testing.assert_allclose(scores, -expected_scores, atol=1e-4)   # FAISS gives squared distances


def test_the_saved_index_reloads_with_its_metadata(random_embeddings, queries, tmp_path):
    built = build_index(random_embeddings, tmp_path / "flat", IndexConfig(factory="Flat", add_batch=128))
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["ids.txt", "index.faiss", "index.json"]
    meta = json.loads((tmp_path / "flat" / "index.json").read_text())
    assert meta["factory"] == "Flat" and meta["metric"] == "ip" and meta["ntotal"] == N
    assert meta["fingerprint"] == "0" * 16 and meta["dim"] == DIM and meta["embeddings"] == str(random_embeddings.path)
    loaded = DenseIndex.load(tmp_path / "flat")
    assert loaded.ids == built.ids and loaded.dim == DIM and loaded.meta == meta
    np.testing.assert_array_equal(loaded.search(queries, K)[0], built.search(queries, K)[0])
    assert loaded.search(queries, K)[1] == built.search(queries, K)[1]


def test_hnsw_with_search_params(random_embeddings, queries, tmp_path):
    flat_ids = build_index(random_embeddings, tmp_path / "flat").search(queries, K)[1]
    config = IndexConfig(factory="HNSW32", search_params="efSearch=128")
    built = build_index(random_embeddings, tmp_path / "hnsw", config)
    assert faiss.downcast_index(built.index).hnsw.efSearch == 128
    loaded = DenseIndex.load(tmp_path / "hnsw", config)
    assert faiss.downcast_index(loaded.index).hnsw.efSearch == 128
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(loaded.search(queries, K)[1], flat_ids)])
    assert recall >= 0.95


def test_ivf_is_trained_on_a_sample(random_embeddings, queries, tmp_path, monkeypatch):
    trained_on = []
    real_factory = faiss.index_factory

    def spying_factory(*args):
        index = real_factory(*args)
        real_train = index.train
        index.train = lambda x: (trained_on.append(x.shape), real_train(x))[1]
        return index

    monkeypatch.setattr(faiss, "index_factory", spying_factory)
    config = IndexConfig(factory="IVF8,Flat", train_size=400, search_params="nprobe=8")
    index = build_index(random_embeddings, tmp_path / "ivf", config)
    assert trained_on == [(400, DIM)] and index.cpu_index.is_trained and index.cpu_index.ntotal == N
    # every list probed: exact, like Flat
    flat = build_index(random_embeddings, tmp_path / "flat")
    assert index.search(queries, K)[1] == flat.search(queries, K)[1]
    assert DenseIndex.load(tmp_path / "ivf", config).search(queries, K)[1] == flat.search(queries, K)[1]


def test_ivf_pq_builds_and_searches(random_embeddings, queries, tmp_path):
    config = IndexConfig(factory="IVF4,PQ8x4", search_params="nprobe=4")
    index = build_index(random_embeddings, tmp_path / "ivfpq", config)
    scores, ids = index.search(queries, K)
    assert scores.shape == (len(queries), K) and all(len(row) == K for row in ids)


def test_k_larger_than_the_index_returns_everything(random_embeddings, queries, tmp_path):
    index = build_index(random_embeddings, tmp_path / "flat")
    scores, ids = index.search(queries[:2], N + 50)
    assert scores.shape == (2, N) and sorted(ids[0]) == sorted(random_embeddings.ids)


# ---------------------------------------------------------------- refusing what does not fit

def test_queries_of_the_wrong_dimension_are_refused(random_embeddings, tmp_path):
    index = build_index(random_embeddings, tmp_path / "flat")
    with pytest.raises(MismatchError, match=r"shape \(3, 16\), the index has dimension 32"):
        index.search(np.zeros((3, 16), dtype=np.float32), K)
    with pytest.raises(MismatchError):
        index.search(np.zeros(DIM, dtype=np.float32), K)


def test_a_bad_factory_string_raises_value_error(random_embeddings, tmp_path):
    with pytest.raises(ValueError, match="FAISS cannot build 'Bogus12'"):
        build_index(random_embeddings, tmp_path / "bad", IndexConfig(factory="Bogus12"))
    assert not (tmp_path / "bad" / "index.json").exists()


def test_bad_search_params_and_options_raise_value_error(random_embeddings, tmp_path):
    build_index(random_embeddings, tmp_path / "flat")
    with pytest.raises(ValueError, match="cannot set search parameters 'nprobe=4'"):
        DenseIndex.load(tmp_path / "flat", IndexConfig(search_params="nprobe=4"))
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="cosine")
    with pytest.raises(ValueError, match="gpu"):
        IndexConfig(gpu="sometimes")


def test_missing_or_inconsistent_index_folders(random_embeddings, tmp_path):
    with pytest.raises(MissingDataError, match="index.json is missing"):
        DenseIndex.load(tmp_path / "nothing")
    build_index(random_embeddings, tmp_path / "flat")
    (tmp_path / "flat" / "ids.txt").write_text("p0\n")
    with pytest.raises(MismatchError, match="ids.txt has 1 ids but the index holds 600"):
        DenseIndex.load(tmp_path / "flat")


# ---------------------------------------------------------------- the GPU switch on a machine without GPUs

def test_gpu_auto_runs_on_cpu_and_always_is_refused(random_embeddings, queries, tmp_path):
    assert use_gpu(IndexConfig(gpu="auto")) is False and use_gpu(IndexConfig(gpu="never")) is False
    index = build_index(random_embeddings, tmp_path / "auto", IndexConfig(gpu="auto"))
    assert index.index is index.cpu_index and type(index.index).__name__ == "IndexFlat"
    assert len(index.search(queries, K)[1][0]) == K
    with pytest.raises(RetromemError, match="--gpu always was asked for, but FAISS sees no GPU"):
        build_index(random_embeddings, tmp_path / "always", IndexConfig(gpu="always"))
    with pytest.raises(RetromemError, match="FAISS sees no GPU"):
        DenseIndex.load(tmp_path / "auto", IndexConfig(gpu="always"))


def test_an_index_faiss_cannot_move_to_gpu_stays_on_cpu(random_embeddings, queries, tmp_path, monkeypatch):
    """With GPUs present but an index type without a GPU version, search goes on on the CPU (with a warning)."""
    build_index(random_embeddings, tmp_path / "hnsw", IndexConfig(factory="HNSW32", gpu="never"))
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)

    class Options:
        shard = useFloat16 = None

    def refuse(index, co=None):
        raise RuntimeError("Error in ...: This index type is not implemented on GPU.")

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse)
    index = DenseIndex.load(tmp_path / "hnsw")
    assert index.index is index.cpu_index and len(index.search(queries, K)[1][0]) == K


# ---------------------------------------------------------------- the searcher refuses another encoder

@pytest.fixture(scope="module")
def tiny_index(tiny_model_dir, tiny_beir_session, tmp_path_factory):
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", normalize=True, precision="fp32",
                                    device="cpu"))
    work = tmp_path_factory.mktemp("tiny-index")
    embeddings = encode_corpus(iter_corpus(tiny_beir_session / "corpus.jsonl"), encoder, work / "emb", chunk_size=16)
    build_index(embeddings, work / "index")
    return encoder, embeddings, DenseIndex.load(work / "index")


def test_dense_searcher_ranks_as_brute_force(tiny_index, tiny_beir_session):
    encoder, embeddings, index = tiny_index
    queries = load_beir(tiny_beir_session).queries
    run = DenseSearcher(encoder, index, query_batch=4).search(queries, k=5)
    assert list(run) == list(queries)
    query_vectors = encoder.encode_queries(list(queries.values()))
    expected_scores, expected_rows = brute_force(np.asarray(embeddings.vectors), query_vectors, 5)
    for ranking, scores, rows in zip(run.values(), expected_scores, expected_rows):
        assert list(ranking) == [embeddings.ids[r] for r in rows]
        np.testing.assert_allclose(list(ranking.values()), scores, atol=1e-5)


def test_dense_searcher_refuses_an_encoder_with_other_pooling(tiny_index, tiny_model_dir):
    _, _, index = tiny_index
    cls = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="cls", normalize=True, precision="fp32",
                                device="cpu"))
    with pytest.raises(MismatchError, match=r"different encoder \(pooling: index 'mean' vs query encoder 'cls'\)"):
        DenseSearcher(cls, index)


def test_dense_searcher_refuses_an_encoder_with_other_weights(tiny_index, tiny_model_dir, tmp_path):
    _, _, index = tiny_index
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(config))
    encoder = Encoder(EncoderConfig(model=str(other), pooling="mean", normalize=True, precision="fp32", device="cpu"))
    with pytest.raises(MismatchError, match="fingerprint") as err:
        DenseSearcher(encoder, index)
    assert str(index.path) in str(err.value)


def test_query_precision_and_prefix_may_differ_from_the_passages(tiny_index, tiny_model_dir):
    """Only what shapes the passage vectors must agree; the query side may use bf16 or a query prefix."""
    _, _, index = tiny_index
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", normalize=True, precision="bf16",
                                    query_prefix="query: ", device="cpu"))
    run = DenseSearcher(encoder, index).search({"q": "insulin"}, k=3)
    assert len(run["q"]) == 3


def test_the_faiss_import_error_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"retromem\[cpu\]"):
        faiss_index.import_faiss()
