"""``retromem eval kilt --task ... --reader DIR``: retrieval (the KILT pipeline), memory gather and reading end to
end. The pipeline's ranked passages are read by the reader; the answers, with the retrieved pages as provenance,
are scored with the official KILT metrics beside the retrieval-only scores.

With no ``memory`` folder, a reader of k < N live layers reads a memory computed for the retrieved passages on
the fly (its encoder's states at its layer, through a codec of its kind trained on them): what ``retromem read
memory`` would store, without the folder.

With ``rerank`` (:class:`retromem.read.read_options.ReadRerankOptions`, ``rerank="memory"``) the pipeline's ranked
passages are first reranked by MaxSim over a token memory (:mod:`retromem.read.rerank`: ``rerank.rerank_memory``,
else ``memory``, else the memory computed on the fly, which then holds the top ``rerank_depth`` passages and is
both reranked from and read from).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from retromem.eval.kilt import KiltScores, score_kilt
from retromem.eval.kilt_report import write_kilt_results
from retromem.read.checkpoint import load_reader
from retromem.read.predict import PredictOutcome, ReaderPredictConfig, predict

log = logging.getLogger(__name__)


@dataclass
class ReaderEvalResult:
    scores: KiltScores
    outcome: PredictOutcome
    results_path: Path
    predictions_path: Path
    seconds: dict[str, float]


def read_retrieval(retrieval: Any, reader_dir: str | Path, memory: str | Path | None = None, passages: int = 5,
                   batch_size: int = 16, output_dir: str | Path | None = None, device: str | None = None,
                   show_progress: bool = False, rerank: Any = None, trust_remote_code: bool = False
                   ) -> ReaderEvalResult:
    """Read the questions of ``retrieval`` (a :class:`retromem.eval.kilt_pipeline.KiltEvalResult`) with the
    reader in ``reader_dir`` over its ranked passages (reranked from a token memory first with ``rerank``, a
    :class:`retromem.read.read_options.ReadRerankOptions`); score and write the results (``output_dir``, default
    ``<retrieval results>/reader``). ``trust_remote_code``: let the reader's (and its memory encoder's) own code
    run."""
    started = time.perf_counter()
    reader = load_reader(reader_dir, device or "cpu", trust_remote_code)
    out = Path(output_dir) if output_dir else retrieval.results_path.parent / "reader"
    words = retrieval.metadata.get("passages", {})
    config = ReaderPredictConfig(task=retrieval.metadata["task_file"], run=str(retrieval.run_path),
                                 memory=str(memory) if memory else None, corpus=str(retrieval.corpus.path),
                                 passages=passages, passage_words=int(words.get("words", 100)),
                                 passage_stride=(words.get("stride") if words.get("stride") != words.get("words")
                                                 else None),
                                 reader=str(reader_dir), output=str(out / "predictions.jsonl"), batch_size=batch_size,
                                 device=device, show_progress=show_progress, trust_remote_code=trust_remote_code,
                                 **(asdict(rerank) if rerank is not None else {}))
    config.validate()
    run, reranked = retrieval.run, None
    live = None
    built = 0.0
    if config.rerank and not reader.spec.full and not memory and not config.rerank_memory:
        # the memory computed on the fly holds the top --rerank-depth: reranked from, then read from
        clock = time.perf_counter()
        live = live_memory_for(reader, replace(config, passages=config.rerank_depth), run)
        built = time.perf_counter() - clock
    if config.rerank:
        from retromem.read.rerank import rerank_for_reading

        reranked = rerank_for_reading(config, reader.spec, run, {e.id: e.input for e in retrieval.examples},
                                      memory=memory or live, device=device, show_progress=show_progress,
                                      trust_remote_code=trust_remote_code)
        run = reranked.run
    if not reader.spec.full and not memory and live is None:
        clock = time.perf_counter()
        live = live_memory_for(reader, config, run)
        built = time.perf_counter() - clock
    outcome = predict(config, memory=live, reader=reader, run=run, reranked=reranked)
    scores = score_kilt(retrieval.examples, outcome.predictions, ks=retrieval.scores.ks)
    spec = reader.spec
    metadata = {**{k: v for k, v in retrieval.metadata.items() if k not in ("predictions", "system")},
                "system": f"reader k={spec.live_layers} ({spec.head}) over {retrieval.metadata.get('method')}",
                "reader": str(reader_dir), "memory": str(memory) if memory else ("computed for the retrieved passages"
                                                                               if live is not None else None),
                "passages_read": passages, "reading_questions_per_second": outcome.questions_per_second,
                "rerank": outcome.rerank,
                "predictions": str(out / "predictions.jsonl")}
    results_path = write_kilt_results(out, scores, metadata)
    seconds = {"memory": built, "rerank": outcome.rerank_seconds, "reading": outcome.reading_seconds,
               "total": time.perf_counter() - started}
    return ReaderEvalResult(scores, outcome, results_path, out / "predictions.jsonl", seconds)


def live_memory_for(reader: Any, config: ReaderPredictConfig, run: Any) -> Any:
    """A memory of the passages ``config`` reads, made as the reader's memory was (encoder, layer, codec)."""
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.memory_codecs import make_codec
    from retromem.read.codebook import reader_memory_codec
    from retromem.read.memory import LiveMemory
    from retromem.read.questions import reading_set

    info = reader.spec.memory
    data = reading_set(config, run=run)
    recorded = info.encoder
    encoder = Encoder(EncoderConfig(model=recorded.get("model_path") or recorded["model"],
                                    precision=recorded.get("precision") or "fp32",
                                    max_length=recorded.get("max_length"),
                                    passage_prefix=recorded.get("passage_prefix"),
                                    trust_remote_code=config.trust_remote_code))
    # a tuned pq codebook decodes only codes assigned by the codebook it started from: code with that one
    codec = reader_memory_codec(reader) or make_codec(info.codec["name"], encoder.dim, **info.codec.get("params", {}))
    passages = [data.passages[i] for i in sorted(data.passages)]
    return LiveMemory(encoder, passages, info.layer, codec)
