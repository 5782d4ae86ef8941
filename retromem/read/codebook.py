"""MEMORY-VQ-style codebook tuning: the reader holds a pq memory's codebook and decodes the stored codes itself.

A ``pq`` memory stores, per token, M sub-codes of ``nbits`` bits (FAISS ``PQ{M}x{nbits}``): sub-vector ``j`` of
the token is centroid ``code[j]`` of sub-quantiser ``j``. With ``retromem read train --tune-codebook`` the
reader takes those centroids ``[M, 2^nbits, dim / M]`` (from the memory's FAISS product quantiser) as a
parameter (:class:`CodebookDecoder`), batches carry the codes instead of decoded vectors, and decoding is a
lookup in the reader (a gather of the centroids by code, concatenated over the M sub-vectors), so the reader's
loss trains the centroids along with the live layers. The codes stay as the frozen memory encoder and the
memory's original codebook assigned them (straight through: no gradient reaches the assignment), so a tuned
reader reads the very codes of a memory coded with the codebook it started from -- :func:`codebook_digest`
identifies that codebook, and :func:`require_codebook` refuses a memory coded with another.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from retromem.errors import ConfigError, MismatchError

#: The codec whose codebook a reader can tune (opq adds a rotation, rq sums stages: not a plain lookup).
TUNABLE_CODEC = "pq"


class CodebookDecoder(nn.Module):
    """Decodes pq sub-codes ``[..., M]`` (integers) to vectors ``[..., M * dsub]`` with trainable ``centroids``
    ``[M, ksub, dsub]``. ``initial`` (a buffer) keeps the codebook the memory was coded with, so a memory can be
    coded on the fly exactly as the stored one was (:func:`reader_memory_codec`)."""

    def __init__(self, m: int, nbits: int, dim: int):
        super().__init__()
        if dim % m:
            raise ConfigError(f"a pq codebook of {m} sub-quantisers cannot split {dim} dimensions")
        self.m, self.nbits, self.dim = int(m), int(nbits), int(dim)
        shape = (self.m, 1 << self.nbits, self.dim // self.m)
        self.centroids = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("initial", torch.zeros(shape, dtype=torch.float32))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        sub = torch.arange(self.m, device=codes.device)
        return self.centroids[sub, codes.long()].flatten(-2)  # [..., M, dsub] -> [..., dim]

    @torch.no_grad()
    def start_from(self, codec: Any) -> CodebookDecoder:
        """Take the centroids of ``codec`` (a trained pq codec) as the starting (and initial) codebook."""
        centroids = torch.from_numpy(pq_centroids(codec))
        if tuple(centroids.shape) != tuple(self.centroids.shape):
            raise MismatchError(f"the memory's pq codebook is {tuple(centroids.shape)}, the reader's "
                                f"{tuple(self.centroids.shape)}")
        self.centroids.copy_(centroids)
        self.initial.copy_(centroids)
        return self


def check_tunable(codec: dict[str, Any], where: str) -> None:
    """Refuse (:class:`ConfigError`) tuning the codebook of a memory whose codec (JSON) is not plain pq."""
    name = codec.get("name")
    if name != TUNABLE_CODEC:
        raise ConfigError(f"--tune-codebook tunes the centroids of a pq memory, and {where} is in codec "
                          f"{codec.get('label') or name}: build the memory with --codec pq:... or train without "
                          "--tune-codebook")


def pq_centroids(codec: Any) -> np.ndarray:
    """The centroids ``[M, ksub, dsub]`` (float32) of a trained pq codec's FAISS product quantiser."""
    import faiss

    if getattr(codec, "name", None) != TUNABLE_CODEC or getattr(codec, "index", None) is None:
        raise ConfigError(f"a pq codebook comes from a trained pq codec, not {getattr(codec, 'label', codec)}")
    pq = faiss.downcast_index(codec.index).pq
    return faiss.vector_to_array(pq.centroids).astype(np.float32).reshape(pq.M, pq.ksub, pq.dsub)


def codebook_digest(centroids: np.ndarray) -> str:
    """An identity of a codebook: the SHA-256 (first 16 hex digits) of its float32 centroids and shape."""
    array = np.ascontiguousarray(centroids, dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def require_codebook(expected: str, memory: Any, where: Any) -> None:
    """Refuse (:class:`MismatchError`) a memory whose pq codes were assigned by another codebook than the one
    (digest ``expected``) a tuned reader started from, or one that cannot give its codes."""
    codec = getattr(memory, "codec", None)
    if not hasattr(memory, "gather_codes") or codec is None:
        raise MismatchError(f"the reader decodes pq codes with its tuned codebook, and {where} gives no codes: read "
                            "a memory folder (`retromem read memory`) or a LiveMemory")
    found = codebook_digest(pq_centroids(codec))
    if found != expected:
        raise MismatchError(f"{where} is coded with another pq codebook (digest {found}) than the one the reader's "
                            f"tuned codebook started from ({expected}), so its codes mean other centroids: read the "
                            "memory the reader was trained on (or one coded with its codebook: `retromem eval kilt "
                            "--reader` without --memory codes one so), or train a reader on this memory")


def unpack_codes(codes: np.ndarray, m: int, nbits: int) -> np.ndarray:
    """FAISS pq codes uint8 ``[n, ceil(m * nbits / 8)]`` -> sub-codes ``[n, m]`` (int64): code ``j`` is bits
    ``j * nbits`` to ``(j + 1) * nbits - 1`` of the code, least significant first (FAISS's ``PQEncoderGeneric``)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if nbits == 8:
        return codes[:, :m].astype(np.int64)
    bits = np.unpackbits(codes, axis=1, bitorder="little")[:, :m * nbits].reshape(len(codes), m, nbits)
    return (bits.astype(np.int64) << np.arange(nbits, dtype=np.int64)).sum(-1)


def reader_memory_codec(reader: Any) -> Any:
    """A trained pq codec holding the codebook a tuned reader's memory was coded with (its ``initial``
    centroids), to code a memory on the fly as the stored one was; None for a reader without a codebook."""
    codebook = getattr(reader, "codebook", None)
    if codebook is None:
        return None
    return pq_codec(codebook.initial.detach().cpu().numpy())


def pq_codec(centroids: np.ndarray) -> Any:
    """A trained ``pq`` codec (M sub-quantisers of ``log2(ksub)`` bits) with ``centroids`` ``[M, ksub, dsub]``."""
    import faiss

    from retromem.index.memory_codecs import make_codec

    m, ksub, dsub = centroids.shape
    nbits = int(ksub).bit_length() - 1
    if 1 << nbits != ksub:
        raise ConfigError(f"a pq codebook has a power of two centroids per sub-quantiser, not {ksub}")
    codec = make_codec(TUNABLE_CODEC, m * dsub, m=int(m), nbits=nbits)
    index = faiss.index_factory(codec.dim, codec.factory)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(),
                               faiss.downcast_index(index).pq.centroids)
    index.is_trained = True
    codec.index, codec.trained = index, True
    return codec


def codebook_shape(codec: dict[str, Any]) -> tuple[int, int, int]:
    """(M, nbits, dim) of a pq codec's JSON (``codec_identity``)."""
    params = dict(codec.get("params") or {})
    return int(params["m"]), int(params["nbits"]), int(codec["dim"])

