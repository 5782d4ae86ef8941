"""The token memory of only the passages a task reads (``retromem read memory``): the top passages the run
retrieves for each question, plus a gold passage where retrieval missed it (for training), at the layer a
reader of k live layers reads (N - k), in the codec it will read -- so a benchmark need not encode a whole
knowledge source. Written by :func:`retromem.index.token_memories.build_memories` (a store folder).

With ``codebook_of`` (a reader trained with ``--tune-codebook``) the memory is coded with the pq codebook that
reader's tuned one started from, so that reader can read it (e.g. the dev memory of a reader trained on the
train memory: a codec trained apart would assign other codes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from retromem.errors import ConfigError, DataError, MismatchError
from retromem.read.codebook import codebook_digest, pq_centroids, pq_codec
from retromem.read.questions import reading_set
from retromem.read.read_options import ReaderMemoryConfig
from retromem.read.reader_config import ReaderSpec

DEFAULT_CODEC = ReaderMemoryConfig.__dataclass_fields__["codec"].default

log = logging.getLogger(__name__)


def build_reading_memory(config: ReaderMemoryConfig):
    """Build the memory (see the module's doc); returns ``(store, passages)``."""
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.token_memories import MemoryConfig, build_memories
    from retromem.index.token_states import num_layers
    from retromem.read.train import check_k

    config.validate()
    data = reading_set(config, force_gold=config.force_gold)
    encoder = Encoder(EncoderConfig(model=config.model, precision=config.precision, batch_size=config.batch_size,
                                    trust_remote_code=config.trust_remote_code))
    layers = num_layers(encoder)
    check_k(config.live_layers, layers, config.model)
    if config.live_layers == layers:
        raise ConfigError(f"--k {layers} re-encodes the passage text through every layer: that reader reads no memory")
    codec_spec, codec = config.codec, None
    if config.codebook_of:
        codec, digest = reader_starting_codec(config.codebook_of, encoder, layers - config.live_layers)
        codec_spec = f"pq:m={codec.m},nbits={codec.nbits}"
        if config.codec not in (DEFAULT_CODEC, codec_spec):
            raise ConfigError(f"--codebook-of codes the memory in the reader's codec {codec.label}, not --codec "
                              f"{config.codec}: leave --codec out")
    passages = [data.passages[i] for i in sorted(data.passages)]
    log.info("memory of %d passages (%d questions, %d gold forced in) at layer %d in %s", len(passages),
             len(data.questions), data.forced, layers - config.live_layers, codec_spec)
    store = build_memories(lambda: iter(passages), encoder, MemoryConfig(layer=layers - config.live_layers,
                                                                         codec=codec_spec),
                           Path(config.output), show_progress=config.show_progress, total=len(passages),
                           corpus_name=f"{data.task.name} passages", codec=codec)
    if codec is not None:
        found = codebook_digest(pq_centroids(store.codec))
        if found != digest:  # a memory already in --output, coded with its own codebook
            raise MismatchError(f"{config.output} already holds a memory coded with another pq codebook ({found}) "
                                f"than the reader's ({digest}): give another --output")
    return store, len(passages)


def reader_starting_codec(folder: str | Path, encoder: Any, layer: int) -> tuple[Any, str]:
    """The trained pq codec of the codebook the tuned reader in ``folder`` started from, and its digest; the
    reader must read ``encoder``'s states at ``layer``."""
    from safetensors import safe_open

    from retromem.read.checkpoint import WEIGHTS_FILE, read_reader_meta

    spec = ReaderSpec.from_json(read_reader_meta(folder).details["spec"])
    if not spec.tuned_codebook:
        raise ConfigError(f"--codebook-of {folder}: that reader was trained without --tune-codebook, so it reads "
                          "memories decoded by their own codec: build the memory with --codec instead")
    if spec.memory.layer != layer:
        raise ConfigError(f"--codebook-of {folder}: that reader reads layer {spec.memory.layer} (--k "
                          f"{spec.live_layers}), not layer {layer}: give --k {spec.live_layers}")
    fingerprint = spec.memory.encoder.get("fingerprint")
    if fingerprint != encoder.fingerprint:
        raise MismatchError(f"--codebook-of {folder}: that reader reads the memory of another encoder "
                            f"({spec.memory.encoder.get('model')}, fingerprint {fingerprint}) than --model "
                            f"({encoder.fingerprint})")
    with safe_open(str(Path(folder) / WEIGHTS_FILE), "pt") as weights:
        codec = pq_codec(weights.get_tensor("codebook.initial").numpy())
    digest = codebook_digest(pq_centroids(codec))
    if digest != spec.memory.tuned_codebook:
        raise DataError(f"the starting codebook in {WEIGHTS_FILE} (digest {digest}) is not the one reader.json "
                        f"records ({spec.memory.tuned_codebook})", folder, fix="the reader is damaged: train it again")
    return codec, digest
