"""The encoder: pooling, normalisation, prefixes, length-sorted batches, precision, metadata, config checks."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retromem import device as device_module
from retromem.data.passage import Passage
from retromem.device import cpu_supports_bf16, resolve_autocast_dtype
from retromem.errors import ConfigError
from retromem.index.encoder import (
    Encoder,
    EncoderConfig,
    read_sentence_transformers_config,
)
from retromem.model_paths import model_fingerprint, resolve_model_path

TEXTS = [
    "short",
    "a somewhat longer sentence about proteins and cells",
    "",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
    "tumor",
    "the immune receptor binds the antibody in plasma and the signal goes to the kinase pathway",
    "glucose and insulin",
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def reference_vectors(model_dir: Path, texts: list[str], pooling: str, max_length: int = 512) -> np.ndarray:
    """Pooled vectors computed directly with transformers, one text at a time (no padding at all)."""
    tokenizer, model = _raw_model(model_dir)
    rows = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            hidden = model(**batch).last_hidden_state[0]
            rows.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(rows).numpy()


@functools.cache
def _raw_model(model_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


@functools.cache
def _cached_encoder(model: str, items: tuple) -> Encoder:
    return Encoder(EncoderConfig(model=model, precision="fp32", device="cpu", **dict(items)))


def fp32(model, **kwargs) -> Encoder:
    """An exact-fp32 CPU encoder, loaded once per distinct configuration (tests only read from it)."""
    return _cached_encoder(str(model), tuple(sorted(kwargs.items())))


# ---------------------------------------------------------------- pooling and sentence-transformers configs

def test_plain_model_defaults_to_cls_without_normalisation(tiny_model_dir):
    encoder = fp32(tiny_model_dir)
    assert (encoder.pooling, encoder.normalize, encoder.query_prefix, encoder.passage_prefix) == ("cls", False, "", "")
    assert encoder.max_length == 128                      # the model's max_position_embeddings
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(vectors, reference_vectors(tiny_model_dir, TEXTS, "cls"), atol=1e-5, rtol=0)


def test_a_model_of_its_own_code_loads_only_when_its_code_is_trusted(tiny_remote_model_dir, tiny_model_dir):
    with pytest.raises(ConfigError, match="own Python code.*give --trust-remote-code"):
        Encoder(EncoderConfig(model=str(tiny_remote_model_dir), precision="fp32", device="cpu"))
    trusted = Encoder(EncoderConfig(model=str(tiny_remote_model_dir), precision="fp32", device="cpu",
                                    trust_remote_code=True))
    assert type(trusted.model).__name__ == "TinyRemoteModel"  # its own class, from modeling_tiny.py
    np.testing.assert_allclose(trusted.encode(TEXTS), fp32(tiny_model_dir).encode(TEXTS), atol=1e-6, rtol=0)


def test_mean_pooling_averages_the_real_tokens_only(tiny_model_dir):
    vectors = fp32(tiny_model_dir, pooling="mean", batch_size=3).encode(TEXTS)
    np.testing.assert_allclose(vectors, reference_vectors(tiny_model_dir, TEXTS, "mean"), atol=1e-5, rtol=0)
    cls = fp32(tiny_model_dir, pooling="cls").encode(TEXTS)
    assert not np.allclose(vectors, cls, atol=1e-3)


def test_sentence_transformers_folder_sets_pooling_normalisation_and_length(tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    encoder = fp32(tiny_st_dir)
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 64)
    ours = encoder.encode_passages(TEXTS)
    theirs = SentenceTransformer(str(tiny_st_dir), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # explicit settings win over the folder's configuration
    override = fp32(tiny_st_dir, pooling="cls", normalize=False, max_length=16)
    assert (override.pooling, override.normalize, override.max_length) == ("cls", False, 16)


def test_the_real_minilm_folder_config_is_read_without_loading_it():
    assert read_sentence_transformers_config(resolve_model_path("minilm")) == {
        "pooling": "mean", "normalize": True, "max_length": 256}


def _copy_st(tiny_st_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "st-copy"
    shutil.copytree(tiny_st_dir, folder)
    return folder


def test_legacy_boolean_pooling_config_and_prompts(tiny_st_dir, tmp_path):
    folder = _copy_st(tiny_st_dir, tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    st_config["prompts"] = {"query": "query: ", "document": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    assert read_sentence_transformers_config(str(folder)) == {
        "pooling": "cls", "normalize": True, "max_length": 32, "query_prefix": "query: ", "passage_prefix": "passage: "}


@pytest.mark.parametrize("pooling_config, module, message", [
    ({"embedding_dimension": 64, "pooling_mode": "max"}, None, "pooling max is not supported"),
    ({"word_embedding_dimension": 64, "pooling_mode_max_tokens": True}, None, "pooling_mode_max_tokens"),
    (None, {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}, "Dense"),
])
def test_unsupported_sentence_transformers_modules_raise(tiny_st_dir, tmp_path, pooling_config, module, message):
    folder = _copy_st(tiny_st_dir, tmp_path)
    if pooling_config is not None:
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    if module is not None:
        modules = json.loads((folder / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps(modules + [module]))
    with pytest.raises(ValueError, match=message):
        read_sentence_transformers_config(str(folder))


# ---------------------------------------------------------------- normalisation, prefixes, truncation

def test_normalisation_gives_unit_vectors_in_the_same_direction(tiny_model_dir):
    raw = fp32(tiny_model_dir, pooling="mean").encode(TEXTS)
    unit = fp32(tiny_model_dir, pooling="mean", normalize=True).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_query_and_passage_prefixes_are_put_before_the_text(tiny_model_dir):
    encoder = fp32(tiny_model_dir, query_prefix="query: ", passage_prefix="passage: ")
    queries = ["glucose and insulin", "tumor"]
    np.testing.assert_array_equal(encoder.encode_queries(queries), encoder.encode(["query: " + q for q in queries]))
    passages = [Passage(id="a", title="Insulin", text="glucose uptake"), Passage(id="b", text="no title here")]
    np.testing.assert_array_equal(encoder.encode_passages(passages),
                                  encoder.encode(["passage: Insulin glucose uptake", "passage: no title here"]))
    plain = fp32(tiny_model_dir)
    assert not np.allclose(plain.encode_queries(queries), encoder.encode_queries(queries), atol=1e-4)


def test_prefixes_come_from_the_sentence_transformers_prompts(tiny_st_dir, tmp_path):
    folder = _copy_st(tiny_st_dir, tmp_path)
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    st_config["prompts"] = {"query": "query: ", "document": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    encoder = fp32(folder)
    assert (encoder.query_prefix, encoder.passage_prefix) == ("query: ", "passage: ")
    assert fp32(folder, query_prefix="").query_prefix == ""


def test_texts_are_truncated_to_max_length(tiny_model_dir):
    encoder = fp32(tiny_model_dir, max_length=6)       # [CLS] + 4 word pieces + [SEP]
    same_start = ["alpha beta gamma delta epsilon zeta", "alpha beta gamma delta eta theta iota kappa"]
    vectors = encoder.encode(same_start)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert not np.allclose(*fp32(tiny_model_dir, max_length=16).encode(same_start), atol=1e-4)


# ---------------------------------------------------------------- batching and precision

def test_length_sorted_batches_equal_one_at_a_time(tiny_model_dir):
    texts = TEXTS * 3
    batched = fp32(tiny_model_dir, pooling="mean", batch_size=4).encode(texts)
    one_by_one = fp32(tiny_model_dir, pooling="mean", batch_size=1)
    single = np.concatenate([one_by_one.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    assert fp32(tiny_model_dir).encode([]).shape == (0, 64)


def test_bf16_is_close_to_fp32(tiny_model_dir):
    exact = fp32(tiny_model_dir, pooling="mean").encode(TEXTS)
    bf16 = Encoder(EncoderConfig(model=str(tiny_model_dir), pooling="mean", precision="bf16", device="cpu"))
    assert bf16.autocast_dtype == torch.bfloat16
    fast = bf16.encode(TEXTS)
    assert fast.dtype == np.float32
    assert cosine_rows(exact, fast).min() > 0.999


def test_auto_precision_follows_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_autocast_dtype("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert resolve_autocast_dtype("fp32", cpu) is None
    assert resolve_autocast_dtype("fp16", cpu) == torch.float16


def test_default_device_is_the_local_rank_gpu_under_a_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_module.default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert device_module.default_device() == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device_module.default_device() == "cuda:1"


# ---------------------------------------------------------------- metadata and configuration errors

def test_metadata_names_everything_that_shapes_the_vectors(tiny_st_dir):
    encoder = fp32(tiny_st_dir)
    meta = encoder.metadata()
    assert set(meta) == {"model", "model_path", "fingerprint", "pooling", "normalize", "max_length",
                         "query_prefix", "passage_prefix", "precision", "dim"}
    assert meta["fingerprint"] == model_fingerprint(str(tiny_st_dir)) and len(meta["fingerprint"]) == 16
    assert (meta["pooling"], meta["normalize"], meta["max_length"], meta["precision"], meta["dim"]) == (
        "mean", True, 64, "fp32", 64)
    assert meta["model_path"] == str(Path(tiny_st_dir).resolve())
    json.dumps(meta)                                        # it goes into JSON files as it is
    bf16 = Encoder(EncoderConfig(model=str(tiny_st_dir), precision="bf16", device="cpu")).metadata()
    assert bf16["precision"] == "bf16"


def test_fingerprints_differ_between_models(tiny_model_dir, tiny_st_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(str(other)) != model_fingerprint(str(tiny_model_dir))


@pytest.mark.parametrize("kwargs, message", [
    ({"pooling": "max"}, "pooling must be one of"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_length": 1}, "max_length"),
])
def test_bad_config_values_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**kwargs)


# ---------------------------------------------------------------- the real MiniLM against sentence-transformers

@pytest.fixture(scope="module")
def scifact_abstracts(scifact_dir) -> list[str]:
    from retromem.data.beir import iter_corpus

    passages = []
    for passage in iter_corpus(scifact_dir / "corpus.jsonl"):
        passages.append(passage.full_text())
        if len(passages) == 200:
            break
    return passages


@pytest.fixture(scope="module")
def st_minilm_vectors(scifact_abstracts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    return model.encode(scifact_abstracts, convert_to_numpy=True)


@pytest.mark.slow
def test_minilm_fp32_matches_sentence_transformers(scifact_abstracts, st_minilm_vectors):
    vectors = Encoder(EncoderConfig(model="minilm", precision="fp32", device="cpu")).encode_passages(scifact_abstracts)
    assert cosine_rows(vectors, st_minilm_vectors).min() >= 0.999999


@pytest.mark.slow
def test_minilm_default_precision_is_close_to_sentence_transformers(scifact_abstracts, st_minilm_vectors):
    vectors = Encoder(EncoderConfig(model="minilm", device="cpu")).encode_passages(scifact_abstracts)
    assert cosine_rows(vectors, st_minilm_vectors).min() >= 0.9999
