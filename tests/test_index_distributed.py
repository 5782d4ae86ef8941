"""Data-parallel encoding: `accelerate launch` with two CPU processes (gloo) equals a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retromem.data.beir import iter_corpus
from retromem.index.embeddings import EmbeddingSet, encode_corpus
from retromem.index.encoder import Encoder, EncoderConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch_command(corpus: Path, model: Path, output: Path) -> list[str]:
    """The launch that runs two CPU processes here: `--multi_gpu` with no GPU falls back to gloo on CPU;
    `--main_process_port 0` picks a free port, so that runs beside each other do not collide on 29500."""
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "retromem.cli", "encode", "--corpus", str(corpus), "--model", str(model), "--output", str(output),
            "--chunk-size", "8", "--precision", "fp32"]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_encode_the_same_vectors_as_one(tiny_beir_session, tiny_model_dir, tmp_path):
    if not ACCELERATE.exists():
        pytest.skip(f"{ACCELERATE} is not installed")
    corpus = tiny_beir_session / "corpus.jsonl"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(launch_command(corpus, tiny_model_dir, tmp_path / "dist"), cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("encoded 40 passages") == 1, result.stdout     # only rank 0 merges and reports

    distributed = EmbeddingSet.load(tmp_path / "dist")
    assert not (tmp_path / "dist" / "chunks").exists()

    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), precision="fp32", device="cpu"))
    single = encode_corpus(iter_corpus(corpus), encoder, tmp_path / "single", chunk_size=8)
    assert distributed.ids == single.ids == [p.id for p in iter_corpus(corpus)]
    assert distributed.meta == single.meta | {"corpus": distributed.meta["corpus"]}
    assert np.allclose(distributed.vectors, single.vectors, atol=1e-6, rtol=0)
