"""Shared fixtures: a tiny random BERT (plain, as a model of its own code, as a sentence-transformers folder), a
tiny BEIR set, and the shared real-data folder (tests that need it skip where it is absent)."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# where transformers copies a model's own code before importing it (tiny_remote_model_dir): never ~/.cache
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="retromem-tests-hf-modules-"))

WORDS = [
    "protein", "cell", "gene", "tumor", "virus", "immune", "receptor", "signal", "brain", "neuron", "drug",
    "dose", "trial", "patient", "blood", "heart", "liver", "kidney", "bone", "muscle", "enzyme", "membrane",
    "plasma", "insulin", "glucose", "vaccine", "antibody", "mutation", "pathway", "kinase", "stress", "sleep",
    "diet", "obesity", "cancer", "therapy", "infection", "lung", "skin",
]


@pytest.fixture(autouse=True)
def _one_torch_thread_for_tiny_models(request):
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that wait for
    each other make them up to 100x slower; tests of the real model (marked slow) keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss = sys.modules.get("faiss")
    faiss_threads = faiss.omp_get_max_threads() if faiss else None
    if faiss:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if faiss:
        faiss.omp_set_num_threads(faiss_threads)


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      vocab_size=vocab_size, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 64-d BERT with the MiniLM (bert-base-uncased) tokenizer; no ST config."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from retromem.model_paths import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


REMOTE_CODE = """from transformers import BertConfig, BertModel


class TinyRemoteConfig(BertConfig):
    model_type = "tiny-remote-bert"


class TinyRemoteModel(BertModel):
    config_class = TinyRemoteConfig
"""


@pytest.fixture(scope="session")
def tiny_remote_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT's weights as a model of its own code (config.json's auto_map names modeling_tiny.py, a
    model type transformers does not know): it loads only with trust_remote_code."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-remote-bert")
    for path in tiny_model_dir.iterdir():
        shutil.copy(path, folder / path.name)
    (folder / "modeling_tiny.py").write_text(REMOTE_CODE, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(model_type="tiny-remote-bert", architectures=["TinyRemoteModel"],
                  auto_map={"AutoConfig": "modeling_tiny.TinyRemoteConfig",
                            "AutoModel": "modeling_tiny.TinyRemoteModel"})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_st_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The same weights saved by sentence-transformers with mean pooling + Normalize, max_seq_length 64."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = tmp_path_factory.mktemp("tiny-st")
    transformer = Transformer(str(tiny_model_dir), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(folder))
    return folder


def make_beir_corpus(n_docs: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        title = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
        docs.append({"_id": f"doc{i}", "title": title, "text": text})
    return docs


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple[str, str, int]]]
               ) -> Path:
    """Write a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (with header)."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc in corpus:
            handle.write(json.dumps(doc) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as handle:
        for query in queries:
            handle.write(json.dumps(query) + "\n")
    for split, rows in qrels.items():
        with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for qid, did, grade in rows:
                handle.write(f"{qid}\t{did}\t{grade}\n")
    return root


def tiny_beir_content(n_docs: int = 40):
    """40 documents, 8 queries (q0-q5 judged in test, q6-q7 in train), 2 relevant docs per test query."""
    corpus = make_beir_corpus(n_docs)
    queries = [{"_id": f"q{i}", "text": corpus[3 * i]["title"] + " " + corpus[3 * i]["text"][:40]} for i in range(8)]
    test = [(f"q{i}", f"doc{3 * i}", 1) for i in range(6)] + [(f"q{i}", f"doc{3 * i + 1}", 2) for i in range(6)]
    train = [("q6", "doc18", 1), ("q7", "doc21", 1)]
    return corpus, queries, {"test": test, "train": train}


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    """A tiny, valid BEIR data set in ``tmp_path/tiny``."""
    corpus, queries, qrels = tiny_beir_content()
    return write_beir(tmp_path / "tiny", corpus, queries, qrels)


@pytest.fixture(scope="session")
def tiny_beir_session(tmp_path_factory) -> Path:
    """The same tiny BEIR set, shared by tests that only read it."""
    corpus, queries, qrels = tiny_beir_content()
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", corpus, queries, qrels)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``$RETROMEM_DATA`` or ``../shared/data``); skips when absent."""
    from retromem.data.beir import data_root
    from retromem.errors import MissingDataError

    try:
        return data_root()
    except MissingDataError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def scifact_dir(shared_data) -> Path:
    folder = shared_data / "beir" / "scifact"
    if not (folder / "corpus.jsonl").exists():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture()
def isolated_env(tmp_path, monkeypatch) -> Path:
    """Point RETROMEM_CACHE at a fresh folder so tests never write to ~/.cache/retromem."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETROMEM_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tokenizer():
    """MiniLM's tokenizer (bert-base-uncased vocabulary), loaded once; a test module may override it."""
    from transformers import AutoTokenizer

    from retromem.model_paths import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


@pytest.fixture()
def restore_logging():
    """main() may configure the root logger with the (captured) stderr of the moment; undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
