"""Codecs of token memories: how each token vector is stored, as bytes, and read back as float32.

=========  ==================================  ===================================================
codec      code per d-dim token                round-trip error (stated; the tests check it)
=========  ==================================  ===================================================
fp32       4d bytes                            none (bit-exact)
fp16       2d bytes                            relative error <= 2^-11 per value (|x| >= 6e-5)
int8       d bytes (FAISS ``SQ8``: a range     <= (max - min) / 255 per dimension for values inside the
           per dimension trained on a sample)  trained range (values outside are clipped to it)
binary     d/8 bytes of sign bits + 2 bytes    the centred norm is kept (relative error <= 2^-10);
           (fp16 scale) = d/8 + 2              the direction keeps the signs of x - mean
pq         ceil(m * nbits / 8) bytes (FAISS    data-dependent: the benchmark measures mean cosine
           ``PQ{m}x{nbits}``)                  (0.90+ at 84 B for 384-d MiniLM states)
opq        the same, after a learnt rotation   data-dependent, at or above pq of the same size
           (``OPQ{m},PQ{m}x{nbits}``)
rq         ceil(m * nbits / 8) bytes (FAISS    data-dependent
           ``RQ{m}x{nbits}``, residual)
=========  ==================================  ===================================================

``binary`` is BTR's 1-bit memory with a calibration that keeps norm and direction: training stores
the per-dimension mean (``mean``) and the per-dimension mean absolute deviation around it
(``spread``); a token ``x`` is stored as the signs of ``x - mean`` packed 8 to a byte and, as fp16,
``r = ||x - mean||``; it is read back as ``mean + r * (spread * signs) / ||spread||``. Centring makes
the signs carry information in every dimension (raw hidden states have dimensions that are almost
always of one sign); weighting the signs by ``spread`` puts the decoded vector where the typical
token lies along each dimension; the stored ``r`` gives the decoded vector exactly the centred norm
of the original (so attention logits and dot products keep their scale) -- the calibration costs 2
bytes per token, and ``mean`` and ``spread`` are stored once per memory.

Every codec is built by :func:`make_codec` (``name``, ``dim`` and its parameters; ``pq``/``opq``/``rq``
sized by ``bytes`` per token or by ``m`` and ``nbits``), trained on a sample with :meth:`Codec.train`,
and saved beside a memory as JSON (``codec.json``: name, dim, parameters) plus its trained arrays as
``.npy`` files (a FAISS quantiser as its serialised bytes in a uint8 ``.npy``): nothing is pickled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from retromem.errors import ConfigError, DataError, MissingDataError
from retromem.io import atomic_path

CODECS = ("fp32", "fp16", "int8", "binary", "pq", "opq", "rq")
#: The largest bits per sub-quantiser that ``bytes=`` sizing picks (2^10 centroids train quickly on a sample).
MAX_AUTO_NBITS = 10


def make_codec(name: str, dim: int, **params: Any) -> Codec:
    """A codec of ``name`` for ``dim``-dimensional vectors (untrained where it needs training).

    ``pq``, ``opq`` and ``rq`` take ``bytes`` (code bytes per token: the largest ``m * nbits`` that fits, with
    ``m`` dividing ``dim`` for pq/opq) or ``m`` and ``nbits`` (default 8). ``train_size`` (vectors sampled to
    train, default 65536) is accepted by every codec that trains.
    """
    if name not in CODECS:
        raise ConfigError(f"codec (--codec) must be one of {', '.join(CODECS)}, got {name!r}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"codec dimension must be a positive integer, got {dim!r}")
    params = {k: v for k, v in params.items() if v is not None}
    cls = {"fp32": Float32Codec, "fp16": Float16Codec, "int8": Int8Codec, "binary": BinaryCodec,
           "pq": FaissCodec, "opq": FaissCodec, "rq": FaissCodec}[name]
    return cls(name, int(dim), params)


def codec_from_json(values: dict[str, Any], folder: str | Path | None = None) -> Codec:
    """The codec ``to_json`` described, with its trained arrays read from ``folder`` (where it was saved)."""
    if not isinstance(values, dict) or "name" not in values or "dim" not in values:
        raise DataError("not a codec description (a JSON object with name and dim)", folder,
                        fix="the memory's metadata is damaged: build the memory again")
    codec = make_codec(values["name"], int(values["dim"]), **values.get("params", {}))
    if values.get("trained") and codec.needs_training:
        if folder is None:
            raise MissingDataError(f"codec {codec.label} is trained: give the folder holding its arrays")
        codec.load_arrays(Path(folder))
    return codec


def parse_codec_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"pq:bytes=84"`` / ``"pq:m=96,nbits=7"`` / ``"binary"`` -> (name, params) (the command line's --codec)."""
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"codec (--codec) parameters are key=value, comma-separated (e.g. pq:bytes=84), "
                              f"got {item!r}")
        try:
            params[key.strip()] = int(value)
        except ValueError:
            try:
                params[key.strip()] = float(value)
            except ValueError:
                params[key.strip()] = value.strip()
    return name.strip(), params


class Codec:
    """Encodes float32 ``(n, dim)`` vectors as uint8 ``(n, code_size)`` codes and decodes them back."""

    needs_training = False
    allowed: tuple[str, ...] = ()

    def __init__(self, name: str, dim: int, params: dict[str, Any]):
        unknown = sorted(set(params) - set(self.allowed))
        if unknown:
            takes = ", ".join(self.allowed) if self.allowed else "no parameters"
            raise ConfigError(f"codec {name} takes {takes}; got {', '.join(unknown)}")
        self.name = name
        self.dim = dim
        self.params = dict(params)
        self.trained = not self.needs_training

    @property
    def label(self) -> str:
        """``name`` and its parameters, e.g. ``pq(m=96,nbits=7)``."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k != "train_size")
        return f"{self.name}({inner})" if inner else self.name

    @property
    def code_size(self) -> int:
        raise NotImplementedError

    def train(self, sample: np.ndarray) -> Codec:
        """Fit the codec's parameters to ``sample`` (float32 ``(n, dim)``); codecs that need none return at once."""
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "params": dict(self.params), "code_size": self.code_size,
                "trained": self.trained, "label": self.label, "files": self.array_files()}

    def array_files(self) -> list[str]:
        return []

    def save_arrays(self, folder: Path) -> None:
        """Write the trained arrays as ``.npy`` files in ``folder`` (atomically each)."""

    def load_arrays(self, folder: Path) -> None:
        raise NotImplementedError

    def same_as(self, other: dict[str, Any]) -> bool:
        return other.get("name") == self.name and other.get("dim") == self.dim and \
            _without_train_size(other.get("params", {})) == _without_train_size(self.params)

    # helpers
    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"codec {self.label} encodes ({self.dim},)-vectors, got an array of shape {x.shape}")
        return x

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise DataError(f"codes of shape {codes.shape}, but codec {self.label} writes {self.code_size} bytes "
                            "per vector", fix="the memory is damaged or of another codec: build it again")
        return codes

    def _require_trained(self) -> None:
        if not self.trained:
            raise ConfigError(f"codec {self.label} must be trained on a sample first (Codec.train)")


class Float32Codec(Codec):
    @property
    def code_size(self) -> int:
        return 4 * self.dim

    def encode(self, x):
        return self._check_input(x).view(np.uint8).reshape(len(x), self.code_size)

    def decode(self, codes):
        return self._check_codes(codes).view(np.float32).reshape(len(codes), self.dim).copy()


class Float16Codec(Codec):
    @property
    def code_size(self) -> int:
        return 2 * self.dim

    def encode(self, x):
        return self._check_input(x).astype(np.float16).view(np.uint8).reshape(len(x), self.code_size)

    def decode(self, codes):
        return self._check_codes(codes).view(np.float16).reshape(len(codes), self.dim).astype(np.float32)


class BinaryCodec(Codec):
    """Sign bits of ``x - mean`` + an fp16 scale ``||x - mean||``; decoded ``mean + r * (spread * s) / ||spread||``."""

    needs_training = True
    allowed = ("train_size",)

    def __init__(self, name, dim, params):
        super().__init__(name, dim, params)
        self.mean: np.ndarray | None = None
        self.spread: np.ndarray | None = None

    @property
    def code_size(self) -> int:
        return (self.dim + 7) // 8 + 2

    def train(self, sample):
        sample = self._check_input(sample)
        if len(sample) == 0:
            raise DataError("cannot train the binary codec on an empty sample", fix="the memory holds no tokens")
        self.mean = sample.mean(0).astype(np.float32)
        spread = np.abs(sample - self.mean).mean(0).astype(np.float32)
        self.spread = np.where(spread > 0, spread, np.float32(1e-6)).astype(np.float32)
        self.trained = True
        return self

    def encode(self, x):
        self._require_trained()
        centred = self._check_input(x) - self.mean
        bits = np.packbits(centred > 0, axis=1)
        scale = np.linalg.norm(centred, axis=1).astype(np.float16).view(np.uint8).reshape(len(x), 2)
        return np.concatenate([bits, scale], axis=1)

    def decode(self, codes):
        self._require_trained()
        codes = self._check_codes(codes)
        nbytes = (self.dim + 7) // 8
        signs = np.unpackbits(codes[:, :nbytes], axis=1, count=self.dim).astype(np.float32) * 2 - 1
        scale = np.ascontiguousarray(codes[:, nbytes:]).view(np.float16).astype(np.float32)  # (n, 1)
        direction = self.spread / np.linalg.norm(self.spread)
        return self.mean + scale * (signs * direction)

    def array_files(self):
        return ["codec-mean.npy", "codec-spread.npy"]

    def save_arrays(self, folder):
        self._require_trained()
        _save_npy(folder / "codec-mean.npy", self.mean)
        _save_npy(folder / "codec-spread.npy", self.spread)

    def load_arrays(self, folder):
        self.mean = _load_npy(folder / "codec-mean.npy", (self.dim,))
        self.spread = _load_npy(folder / "codec-spread.npy", (self.dim,))
        self.trained = True


class _FaissIndexCodec(Codec):
    """A codec whose trained state is one FAISS index (``self.index``), coding through its standalone
    ``sa_encode`` / ``sa_decode`` and stored as that index's serialisation (``codec-faiss.npy``)."""

    def encode(self, x):
        self._require_trained()
        x = self._check_input(x)
        return self.index.sa_encode(x) if len(x) else np.zeros((0, self.code_size), np.uint8)

    def decode(self, codes):
        self._require_trained()
        codes = self._check_codes(codes)
        return self.index.sa_decode(codes) if len(codes) else np.zeros((0, self.dim), np.float32)

    def array_files(self):
        return ["codec-faiss.npy"]

    def save_arrays(self, folder):
        _save_faiss(folder / "codec-faiss.npy", self.index)

    def load_arrays(self, folder):
        self.index = _load_faiss(folder / "codec-faiss.npy", self.dim)
        self.trained = True


class Int8Codec(_FaissIndexCodec):
    """FAISS ``SQ8``: 8 bits per dimension, over a per-dimension [min, max] range trained on a sample."""

    needs_training = True
    allowed = ("train_size",)

    def __init__(self, name, dim, params):
        super().__init__(name, dim, params)
        self.index = None

    @property
    def code_size(self) -> int:
        return self.dim

    def train(self, sample):
        import faiss

        sample = self._check_input(sample)
        self.index = faiss.index_factory(self.dim, "SQ8")
        self.index.train(sample)
        self.trained = True
        return self

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-dimension (min, max - min) the codec quantises over."""
        import faiss

        trained = faiss.vector_to_array(faiss.downcast_index(self.index).sq.trained)
        return trained[:self.dim], trained[self.dim:]


class FaissCodec(_FaissIndexCodec):
    """``pq`` / ``opq`` / ``rq`` through FAISS's ``index_factory`` and ``sa_encode`` / ``sa_decode``."""

    needs_training = True
    allowed = ("bytes", "m", "nbits", "train_size", "niter", "beam")

    def __init__(self, name, dim, params):
        super().__init__(name, dim, params)
        self.m, self.nbits = _size(name, dim, params)
        self.params.pop("bytes", None)
        self.params.update(m=self.m, nbits=self.nbits)
        self.index = None

    @property
    def factory(self) -> str:
        pq = f"PQ{self.m}x{self.nbits}np"  # np: no polysemous training (it only reorders codes, at 6x the cost)
        return {"pq": pq, "opq": f"OPQ{self.m},{pq}", "rq": f"RQ{self.m}x{self.nbits}"}[self.name]

    @property
    def code_size(self) -> int:
        return (self.m * self.nbits + 7) // 8

    def train(self, sample):
        import faiss

        sample = self._check_input(sample)
        needed = 1 << self.nbits
        if len(sample) < needed:
            raise DataError(f"codec {self.label} needs at least {needed} vectors to train its {needed} centroids per "
                            f"sub-quantiser, and the sample holds {len(sample)}",
                            fix="use fewer bits (nbits), or a larger corpus")
        self.index = faiss.index_factory(self.dim, self.factory)
        if self.name == "opq" and "niter" in self.params:
            faiss.downcast_VectorTransform(self.index.chain.at(0)).niter = int(self.params["niter"])
        if self.name == "rq":  # beam search width while training and encoding (FAISS's default, 5, is slow)
            faiss.downcast_index(self.index).rq.max_beam_size = int(self.params.get("beam", 1))
        self.index.train(sample)
        self.trained = True
        return self


def codebook_bytes(folder: str | Path, codec: Codec) -> int:
    """Bytes of the codec's trained arrays in ``folder`` (what a memory amortises over its tokens)."""
    return sum((Path(folder) / name).stat().st_size for name in codec.array_files() if (Path(folder) / name).exists())


def _size(name: str, dim: int, params: dict[str, Any]) -> tuple[int, int]:
    """(m, nbits) from ``bytes`` or ``m``/``nbits``; a size no setting can reach names the closest that can."""
    divides = name in ("pq", "opq")
    nbits = params.get("nbits")
    if nbits is not None and (not isinstance(nbits, int) or not 1 <= nbits <= 16):
        raise ConfigError(f"codec {name}: nbits must be an integer from 1 to 16, got {nbits!r}")
    if "bytes" in params:
        if "m" in params:
            raise ConfigError(f"codec {name}: give bytes or m (with nbits), not both")
        budget = params["bytes"]
        if not isinstance(budget, (int, float)) or budget < 1:
            raise ConfigError(f"codec {name}: bytes per token must be at least 1, got {budget!r} (the smallest "
                              f"{name} code is 1 byte: m=1, nbits=8)")
        best = None
        for m in range(1, dim + 1):
            if divides and dim % m:
                continue
            for bits in ([nbits] if nbits else range(1, MAX_AUTO_NBITS + 1)):
                total = m * bits
                if (total + 7) // 8 > budget:
                    continue
                key = (total, bits == 8, -abs(bits - 8))
                if best is None or key > best[0]:
                    best = (key, m, bits)
        if best is None:
            raise ConfigError(f"codec {name}: no m (dividing {dim}) with nbits={nbits} fits in {budget} bytes; the "
                              f"smallest is m=1 ({(nbits + 7) // 8} bytes)")
        return best[1], best[2]
    m = params.get("m")
    if m is None:
        raise ConfigError(f"codec {name} needs a size: bytes=B (code bytes per token), or m=M with nbits=N, e.g. "
                          f"{name}:bytes=64")
    nbits = nbits or 8
    if not isinstance(m, int) or m < 1:
        raise ConfigError(f"codec {name}: m must be a positive integer, got {m!r}")
    if divides and dim % m:
        lower = max(d for d in range(1, m) if dim % d == 0) if m > 1 else 1
        upper = next((d for d in range(m + 1, dim + 1) if dim % d == 0), None)
        closest = f"m={lower} ({(lower * nbits + 7) // 8} bytes)"
        if upper is not None:
            closest += f" or m={upper} ({(upper * nbits + 7) // 8} bytes)"
        raise ConfigError(f"codec {name}: m={m} does not divide the dimension {dim}, so it cannot give "
                          f"{math.ceil(m * nbits / 8)} bytes per token; the closest that can: {closest}")
    if m > dim:
        raise ConfigError(f"codec {name}: m={m} is more sub-quantisers than the {dim} dimensions; give at most {dim}")
    return m, nbits


def _without_train_size(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in ("train_size", "bytes")}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise MissingDataError(f"{path} is missing: the memory's codec cannot be read; build the memory again") from err
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"not a readable .npy array ({err})", path, fix="build the memory again") from err
    if array.shape != shape:
        raise DataError(f"holds an array of shape {array.shape}, expected {shape}", path,
                        fix="build the memory again")
    return array.astype(np.float32)


def _save_faiss(path: Path, index) -> None:
    import faiss

    _save_npy(path, faiss.serialize_index(index))


def _load_faiss(path: Path, dim: int):
    import faiss

    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise MissingDataError(f"{path} is missing: the memory's codec cannot be read; build the memory again") from err
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"not a readable .npy array ({err})", path, fix="build the memory again") from err
    index = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
    if index.d != dim:
        raise DataError(f"holds a quantiser of dimension {index.d}, expected {dim}", path, fix="build the memory again")
    return index
