"""A reader's encoder as a plain encoder folder (``retromem read export-encoder``).

The encoder of a trained reader holds every layer as training left it (for a full re-encoding reader, k = N, all
of them fine-tuned on the task). Saved as a Hugging Face encoder folder it loads with ``AutoModel``, so it can be
the memory encoder of a new reader: ``read memory --model EXPORTED --k 2`` computes a task-tuned memory and
``read train --model EXPORTED --k 2`` starts the reader from the same weights -- LUMEN's memory encoder
fine-tuned on the task before the memory is computed, which narrows its gap to full re-encoding
(docs/benchmarks.md has the measurement). The folder also encodes with ``retromem encode``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from retromem.errors import ConfigError
from retromem.io import write_json_atomic

#: What the exported folder records of where it came from.
SOURCE_FILE = "retromem_exported_from.json"


def export_encoder(reader_folder: str | Path, output: str | Path, trust_remote_code: bool = False) -> Path:
    """Write the encoder of the reader in ``reader_folder`` to ``output`` (config, ``model.safetensors``, the
    tokenizer, a model's own code where it has one, and :data:`SOURCE_FILE`); the folder appears whole or not
    at all. An ``output`` that holds files is refused."""
    from retromem.read.checkpoint import load_reader

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} exists and is not an empty folder: give a new --output")
    reader = load_reader(reader_folder, trust_remote_code=trust_remote_code)
    spec = reader.spec
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        reader.encoder.save_pretrained(staging)
        reader.tokenizer.save_pretrained(staging)
        write_json_atomic(staging / SOURCE_FILE, {
            "reader": str(Path(reader_folder).resolve()), "encoder": spec.encoder, "live_layers": spec.live_layers,
            "num_layers": spec.num_layers, "head": spec.head, "tuned": _tuned_layers(spec)})
        if output.exists():
            output.rmdir()
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output


def _tuned_layers(spec) -> str:
    """Which of the exported encoder's layers training changed."""
    if spec.full:
        return "every layer"
    if spec.tune_question_encoder:
        return f"every layer: the top {spec.live_layers} live, the lower ones as the question encoder"
    return f"the top {spec.live_layers} layers (the lower ones are the starting encoder's)"
