"""Build a token memory: every passage's per-token states at one layer, condensed and coded, in a store.

``build_memories(corpus, encoder, config, output)`` streams the corpus in chunks of ``shard_size``
passages (one chunk = one shard of :mod:`retromem.index.memory_store`), computes each chunk's states
after ``config.layer`` with the encoder (:mod:`retromem.index.token_states`: the same tokenizing,
length sorting, batching and autocast as passage encoding), condenses them (drop special tokens,
drop punctuation and stopword tokens, merge neighbouring similar tokens down to ``merge_ratio``),
codes them with the codec (trained first on a sample of the first chunk's tokens) and writes the
shard atomically. An interrupted build resumes: finished shards whose passages are unchanged are
kept, the rest written. Under ``accelerate launch`` / ``torchrun`` chunk *i* goes to rank
``i % world_size`` (the machinery of :mod:`retromem.index.embeddings`), rank 0 trains the codec
before the others start and writes the lookup table and the final metadata after all are done.

Token merging is BTR-style bipartite soft matching, restricted to neighbours so that every kept
vector stands for a contiguous run of original tokens (its span): in each round the tokens at even
positions each pick their more similar neighbour (cosine) at an odd position, the most similar
pairs are merged (a size-weighted mean of the vectors; the spans joined), and rounds repeat until
``ceil(merge_ratio * n)`` vectors are left. The kept vector keeps the token id of the odd-position
token it merged into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retromem.artifacts import ArtifactMeta, CorpusDigest, EncoderInfo, corpus_ref, file_stamp
from retromem.data.passage import Passage
from retromem.errors import ConfigError, DataError, MismatchError
from retromem.index.embeddings import _chunked, _distributed_context, _fresh
from retromem.index.memory_codecs import CODECS, Codec, make_codec, parse_codec_spec
from retromem.index.memory_store import KIND, MemoryStore, list_shards, shard_path, write_lookup, write_shard
from retromem.index.token_states import LayerStates, check_layer, passage_layer_states
from retromem.io import read_json, refuse_a_file
from retromem.options import check_options, option

log = logging.getLogger(__name__)

#: English stopwords (the usual short list); tokens equal to one of these are dropped by ``drop_stopwords``.
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves""".split())  # noqa: SIM905 (a list of 170 quoted words would be hard to read)

#: Options that change what a memory holds: a resumed or reused build must agree on them.
CONTENT_OPTIONS = ("layer", "codec", "drop_special", "drop_stopwords", "merge_ratio", "shard_size", "train_tokens")


@dataclass
class MemoryConfig:
    """What a token memory holds and how it is written."""

    layer: int = option(-1, min=-1, help="the encoder layer whose output is stored: 0 = the embedding output, N = the "
                        "last of N layers; -1 = the last")
    codec: str = option("fp16", help=f"how each token vector is stored: one of {', '.join(CODECS)}, with parameters "
                        "after a colon, e.g. pq:bytes=84, opq:m=64,nbits=8, rq:bytes=32 (see docs/memory.md)")
    drop_special: bool = option(False, help="drop the special tokens ([CLS], [SEP], ...)")
    drop_stopwords: bool = option(False, help="drop punctuation and English stopword tokens")
    merge_ratio: float = option(1.0, gt=0, max=1, help="merge neighbouring similar tokens (bipartite soft matching) "
                                "until this fraction of each passage's vectors is left; 1 = no merging")
    shard_size: int = option(4096, min=1, help="passages per shard: the unit of writing, resuming and of the work "
                             "shared between processes")
    train_tokens: int = option(65536, min=1, help="token vectors sampled from the first shard to train the codec")

    def __post_init__(self) -> None:
        check_options(self)
        name, _ = parse_codec_spec(self.codec)
        if name not in CODECS:
            raise ConfigError(f"codec (--codec) must be one of {', '.join(CODECS)} (parameters after a colon, e.g. "
                              f"pq:bytes=84), got {self.codec!r}")

    def make_codec(self, dim: int) -> Codec:
        name, params = parse_codec_spec(self.codec)
        return make_codec(name, dim, **params)

    def condenses(self) -> bool:
        """Whether vectors stand for other than one original token each (so spans are stored)."""
        return self.drop_special or self.drop_stopwords or self.merge_ratio < 1


@dataclass
class BuildReport:
    """What a build saw: passages, tokens before and after condensing, truncated and empty passages."""

    passages: int = 0
    tokens: int = 0
    kept: int = 0
    truncated: int = 0
    empty: int = 0


StatesFn = Callable[[list[Passage]], LayerStates]


def build_memories(corpus: Any, encoder, config: MemoryConfig, output: str | Path, show_progress: bool = False,
                   total: int | None = None, corpus_name: str | None = None, corpus_path: str | Path | None = None,
                   states: StatesFn | None = None, codec: Codec | None = None) -> MemoryStore | None:
    """Write the token memory of ``corpus`` (a :class:`retromem.data.corpora.Corpus`, an iterable of passages, or
    a callable returning a fresh iterator) into ``output``; returns the store (``None`` on ranks other than 0).

    ``states`` (passages -> :class:`LayerStates`) replaces the encoder's forward pass, e.g. by states computed
    once and cached (the benchmark recodes one encoder pass with every codec); it must give what
    :func:`retromem.index.token_states.passage_layer_states` would. ``codec``: a trained codec of
    ``config.codec``'s name and parameters to code with, instead of one trained on the first chunk (e.g. the
    codebook a reader was trained on); a memory already in ``output`` keeps its own.
    """
    output = Path(output)
    if hasattr(corpus, "passages") and callable(corpus.passages):
        corpus_path = corpus_path or getattr(corpus, "path", None)
        corpus_name = corpus_name or getattr(corpus, "name", None)
        if total is None and hasattr(corpus, "count"):
            total = corpus.count()
        corpus = corpus.passages
    layer = check_layer(encoder, config.layer)
    wanted_codec = config.make_codec(encoder.dim)
    if codec is not None and not (codec.trained and codec.same_as(wanted_codec.to_json())):
        raise ConfigError(f"the codec given to code with ({codec.label}) must be a trained {wanted_codec.label}")
    codec = codec if codec is not None else wanted_codec
    rank, world_size, barrier = _distributed_context()
    states = states or (lambda chunk: passage_layer_states(encoder, chunk, layer))
    drop = TokenFilter.for_tokenizer(encoder.tokenizer, config)
    token_dtype = "uint16" if len(encoder.tokenizer) <= 1 << 16 else "int32"
    wanted = _wanted_details(encoder, config, layer, codec, token_dtype)
    meta_file = output / "meta.json"

    if meta_file.exists():
        store = _check_existing(output, encoder.metadata(), wanted)
        if store.complete:
            _check_same_corpus(store, _fresh(corpus), corpus_path)
            store.reused = True
            return store if rank == 0 else None
    if rank == 0:
        refuse_a_file(output, "--output", "a folder for the token memory")
        output.mkdir(parents=True, exist_ok=True)
    first_chunk: list[Passage] | None = None
    first_states = None
    if rank == 0 and not meta_file.exists():  # the codec is trained before any process writes a shard
        first_chunk = next(_chunked(_fresh(corpus), config.shard_size), [])
        if not first_chunk:
            with contextlib.suppress(OSError):
                output.rmdir()  # made just now, and empty
            raise DataError("the corpus holds no passages: nothing to store", corpus_path or corpus_name,
                            fix="check the corpus file")
        if codec.needs_training:
            if not codec.trained:
                first_states = _condensed(first_chunk, states(first_chunk), drop, config)
                sample = np.concatenate([v for v, _, _ in first_states[0]])
                if len(sample) > config.train_tokens:
                    sample = sample[np.random.default_rng(0).choice(len(sample), config.train_tokens, replace=False)]
                codec.train(sample)
            codec.save_arrays(output)
        ArtifactMeta(kind=KIND, encoder=EncoderInfo.from_dict(encoder.metadata()),
                     details={**wanted, "codec": codec.to_json(), "complete": False}).write(meta_file)
    barrier()
    store = MemoryStore.open(output)
    codec = store.codec

    report = BuildReport()
    digest = CorpusDigest()
    stamp = file_stamp(corpus_path) if corpus_path is not None else None
    n_chunks = 0
    existing = dict(list_shards(output))
    bar = tqdm(total=total, desc="memory", unit="passage", disable=not show_progress or rank != 0, dynamic_ncols=True)
    with bar:
        for index, chunk in enumerate(_chunked(digest.watch(_fresh(corpus)), config.shard_size)):
            n_chunks += 1
            if index % world_size != rank:
                bar.update(len(chunk) if world_size > 1 else 0)
                continue
            chunk_sum = corpus_ref(chunk).digest
            if index in existing:
                info = read_json(existing[index] / "shard.json")
                if info.get("digest") == chunk_sum:
                    _add_report(report, info)
                    bar.update(len(chunk))
                    continue
                log.warning("%s holds other passages than the corpus's chunk %d: writing it again", existing[index],
                            index)
            if index == 0 and first_states is not None:
                condensed, stats = first_states
            else:
                condensed, stats = _condensed(chunk, states(chunk), drop, config)
            info = {"digest": chunk_sum, **stats}
            write_shard(output, index, [p.id for p in chunk], [codec.encode(v) for v, _, _ in condensed],
                        [t for _, t, _ in condensed], [s for _, _, s in condensed] if config.condenses() else None,
                        codec.code_size, token_dtype=token_dtype, info=info)
            _add_report(report, info)
            bar.update(len(chunk))
    if digest.count == 0:
        raise DataError("the corpus holds no passages: nothing to store", corpus_path or corpus_name,
                        fix="check the corpus file")
    barrier()
    if rank != 0:
        barrier()
        return None
    for stale in [n for n, _ in list_shards(output) if n >= n_chunks]:  # from a longer corpus of an earlier run
        import shutil

        shutil.rmtree(shard_path(output, stale))
    report = BuildReport()
    for _, folder in list_shards(output):
        _add_report(report, read_json(folder / "shard.json"))
    if report.truncated:
        log.warning("%d passage(s) were longer than the encoder's %d tokens and were truncated to it",
                    report.truncated, encoder.max_length)
    if report.empty:
        log.warning("%d passage(s) are empty (no title or text) and are stored with %s", report.empty,
                    "no vectors" if config.drop_special else "their special tokens only")
    covered = write_lookup(output)
    corpus_ref_ = digest.ref(corpus_name)
    if stamp is not None and file_stamp(corpus_path) == stamp:
        corpus_ref_ = dataclasses.replace(corpus_ref_, file=stamp)
    meta = store.meta
    meta.corpus = corpus_ref_
    meta.details.update(complete=True, lookup_shards=covered, count=report.passages, tokens=report.tokens,
                        kept_tokens=report.kept, truncated=report.truncated, empty=report.empty, shards=covered)
    meta.write(meta_file)
    barrier()
    return MemoryStore.open(output)


def condense(states: np.ndarray, token_ids: np.ndarray, keep: np.ndarray | None, merge_ratio: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One passage's ``(vectors, token_ids, spans)`` after dropping tokens (``keep``: a boolean mask, or None) and
    merging neighbours down to ``merge_ratio`` (see the module docstring)."""
    n = len(token_ids)
    positions = np.arange(n, dtype=np.int32)
    if keep is not None:
        states, token_ids, positions = states[keep], token_ids[keep], positions[keep]
    spans = np.stack([positions, positions + 1], axis=1).astype(np.int32)
    vectors = np.asarray(states, dtype=np.float32)
    if merge_ratio < 1 and len(vectors) > 1:
        vectors, token_ids, spans = merge_neighbours(vectors, np.asarray(token_ids), spans,
                                                     max(1, math.ceil(merge_ratio * len(vectors))))
    return np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(token_ids, dtype=np.int32), spans


def merge_neighbours(x: np.ndarray, token_ids: np.ndarray, spans: np.ndarray, target: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bipartite soft matching between even- and odd-position neighbours until ``target`` vectors are left.

    Vectors merge as a mean weighted by how many original tokens each stands for (``sizes``), so a
    vector standing for many tokens moves less; spans are joined (always contiguous)."""
    x = x.astype(np.float32, copy=True)
    sizes = (spans[:, 1] - spans[:, 0]).astype(np.float32)
    while len(x) > target and len(x) > 1:
        n = len(x)
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim_next = (unit[:-1] * unit[1:]).sum(1)  # sim_next[i]: token i with token i + 1
        a = np.arange(0, n, 2)
        left = np.where(a - 1 >= 0, sim_next[np.maximum(a - 1, 0)], -np.inf)
        right = np.where(a + 1 < n, sim_next[np.minimum(a, n - 2)], -np.inf)
        go_right = right >= left
        partner = np.where(go_right, a + 1, a - 1)
        score = np.where(go_right, right, left)
        valid = np.isfinite(score)
        r = min(n - target, int(valid.sum()))
        if r <= 0:
            break
        chosen = np.argsort(-np.where(valid, score, -np.inf), kind="stable")[:r]
        src, dst = a[chosen], partner[chosen]
        weighted = x * sizes[:, None]
        np.add.at(weighted, dst, weighted[src])
        np.add.at(sizes, dst, sizes[src])
        x = weighted / sizes[:, None]
        starts, ends = spans[:, 0].copy(), spans[:, 1].copy()
        np.minimum.at(starts, dst, starts[src])
        np.maximum.at(ends, dst, ends[src])
        spans = np.stack([starts, ends], axis=1)
        keep = np.ones(n, dtype=bool)
        keep[src] = False
        x, sizes, spans, token_ids = x[keep], sizes[keep], spans[keep], token_ids[keep]
    return x, token_ids, spans.astype(np.int32)


@dataclass
class TokenFilter:
    """Which token ids ``drop_special`` / ``drop_stopwords`` remove."""

    dropped: np.ndarray | None  # a boolean per vocabulary id, or None (drop nothing)
    special: np.ndarray | None

    @classmethod
    def for_tokenizer(cls, tokenizer, config: MemoryConfig) -> TokenFilter:
        if not (config.drop_special or config.drop_stopwords):
            return cls(None, None)
        size = len(tokenizer)
        dropped = np.zeros(size, dtype=bool)
        special = np.zeros(size, dtype=bool)
        special[[i for i in tokenizer.all_special_ids if i < size]] = True
        if config.drop_special:
            dropped |= special
        if config.drop_stopwords:
            for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
                if token is not None and _is_stopword_or_punctuation(token):
                    dropped[token_id] = True
        return cls(dropped, special)

    def keep(self, token_ids: np.ndarray) -> np.ndarray | None:
        """The mask of tokens kept; a passage that would lose every token keeps its non-special ones (or all)."""
        if self.dropped is None:
            return None
        ids = np.minimum(token_ids, len(self.dropped) - 1)
        keep = ~self.dropped[ids]
        if not keep.any():
            keep = ~self.special[ids]
        return keep


def _is_stopword_or_punctuation(token: str) -> bool:
    word = token.removeprefix("##").removeprefix("\u2581").removeprefix("\u0120").lower()
    if not word:
        return False
    if all(ch in string.punctuation or unicodedata.category(ch).startswith("P") for ch in word):
        return True
    return not token.startswith("##") and word in STOPWORDS


def _condensed(chunk: Sequence[Passage], layer_states: LayerStates, drop: TokenFilter, config: MemoryConfig):
    out = []
    stats = {"passages": len(chunk), "tokens": 0, "kept": 0, "truncated": layer_states.truncated, "empty": 0}
    for passage, states, token_ids in zip(chunk, layer_states.states, layer_states.token_ids):
        if not passage.text.strip() and not (passage.title or "").strip():
            stats["empty"] += 1
        keep = drop.keep(token_ids)
        vectors, tokens, spans = condense(states, token_ids, keep, config.merge_ratio)
        if config.drop_special and not passage.text.strip() and not (passage.title or "").strip():
            vectors, tokens, spans = vectors[:0], tokens[:0], spans[:0]
        stats["tokens"] += len(token_ids)
        stats["kept"] += len(tokens)
        out.append((vectors, tokens, spans))
    return out, stats


def _add_report(report: BuildReport, info: dict) -> None:
    report.passages += int(info.get("passages", 0))
    report.tokens += int(info.get("tokens", 0))
    report.kept += int(info.get("kept", 0))
    report.truncated += int(info.get("truncated", 0))
    report.empty += int(info.get("empty", 0))


def _wanted_details(encoder, config: MemoryConfig, layer: int, codec: Codec, token_dtype: str) -> dict:
    options = {name: getattr(config, name) for name in CONTENT_OPTIONS}
    options["layer"] = layer
    return {"layer": layer, "options": options, "token_dtype": token_dtype, "batch_size": encoder.config.batch_size,
            "num_layers": int(encoder.model.config.num_hidden_layers), "spans": config.condenses()}


def _check_existing(output: Path, encoder_meta: dict, wanted: dict) -> MemoryStore:
    """The memory already in ``output`` if it was made with this encoder and these options, else refuse."""
    from retromem.index.memory_store import require_memory

    store = MemoryStore.open(output)
    fix = "use another output folder or delete this one"
    require_memory(store, encoder_meta, fix=fix)
    found = store.meta.details.get("options", {})
    diffs = [f"{k}: {found.get(k)!r} then, {v!r} now" for k, v in wanted["options"].items() if found.get(k) != v]
    if store.meta.details.get("batch_size") != wanted["batch_size"] and not store.complete:
        diffs.append(f"batch_size: {store.meta.details.get('batch_size')} then, {wanted['batch_size']} now "
                     "(--batch-size)")
    if diffs:
        raise MismatchError(f"{output} holds a token memory made with other options ({'; '.join(diffs)}); {fix}")
    return store


def _check_same_corpus(store: MemoryStore, passages: Iterable[Passage], corpus_path) -> None:
    recorded = store.meta.corpus
    if recorded is not None and recorded.same_file(corpus_path):
        return
    digest = CorpusDigest()
    for passage in passages:
        digest.update(passage)
    if recorded is None or recorded.digest != digest.hexdigest() or recorded.count != digest.count:
        raise MismatchError(f"{store.path} holds the token memory of another corpus, or the corpus changed since "
                            f"({recorded.count if recorded else '?'} passages then, {digest.count} now); delete it or "
                            "choose another folder")
