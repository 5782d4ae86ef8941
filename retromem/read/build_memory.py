"""The token memory of only the passages a task reads (``retromem read memory``): the top passages the run
retrieves for each question, plus a gold passage where retrieval missed it (for training), at the layer a
reader of k live layers reads (N - k), in the codec it will read -- so a benchmark need not encode a whole
knowledge source. Written by :func:`retromem.index.token_memories.build_memories` (a store folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from retromem.errors import ConfigError
from retromem.read.questions import reading_set
from retromem.read.read_options import ReaderMemoryConfig

log = logging.getLogger(__name__)


def build_reading_memory(config: ReaderMemoryConfig):
    """Build the memory (see the module's doc); returns ``(store, passages)``."""
    from retromem.index.encoder import Encoder, EncoderConfig
    from retromem.index.token_memories import MemoryConfig, build_memories
    from retromem.index.token_states import num_layers
    from retromem.read.train import check_k

    config.validate()
    data = reading_set(config, force_gold=config.force_gold)
    encoder = Encoder(EncoderConfig(model=config.model, precision=config.precision, batch_size=config.batch_size))
    layers = num_layers(encoder)
    check_k(config.live_layers, layers, config.model)
    if config.live_layers == layers:
        raise ConfigError(f"--k {layers} re-encodes the passage text through every layer: that reader reads no memory")
    passages = [data.passages[i] for i in sorted(data.passages)]
    log.info("memory of %d passages (%d questions, %d gold forced in) at layer %d in %s", len(passages),
             len(data.questions), data.forced, layers - config.live_layers, config.codec)
    store = build_memories(lambda: iter(passages), encoder, MemoryConfig(layer=layers - config.live_layers,
                                                                         codec=config.codec),
                           Path(config.output), show_progress=config.show_progress, total=len(passages),
                           corpus_name=f"{data.task.name} passages")
    return store, len(passages)
