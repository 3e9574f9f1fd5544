"""Step results kept with their completion: encoding, where they live, code fingerprints.

A completed step's return value is pickled (protocol 5; with cloudpickle when it holds
something defined in ``__main__``, i.e. in a notebook, which another process could not
import) and written with the completion: below ``inline_max`` bytes in the store's own
``results`` table, above it to a file under the archive's base (a directory beside the
SQLite file by default, or ``results_url``: a path or an fsspec URL). The file is
written and synced *before* the commit that records the completion, and that commit
holds the row pointing to it: a completion on record always has its result.

Large buffers (numpy arrays, bytes-like objects) travel out of band (pickle protocol
5's ``buffer_callback``), so a 100 MB array is written straight from its memory and
read back without a copy. The byte layout, inline or in a file::

    b"CMBR1" | n buffers (u32) | len(pickle) (u64) | len(buffer i) (u64) ... | pickle | buffers

A value that cannot be pickled does not fail its step: ``persist`` returns why, the
node records it, the value stays in the executor's memory, and a resume runs the step
again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import os
import pickle
import struct
import types
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional
from urllib.parse import quote, urlsplit

from .errors import EngineError, StoreError

_MAGIC = b"CMBR1"
_HEAD = struct.Struct("<IQ")
#: Results up to this size (bytes, encoded) live in the store; larger ones in files.
DEFAULT_INLINE_MAX = 1 << 20


class Unstorable(Exception):
    """A result that cannot be encoded; the message says why."""


class _NotPortable(Exception):
    """Something defined in ``__main__``: plain pickle would name what no other process has."""


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(owner, "__module__", None) == "__main__":
            raise _NotPortable()
        return NotImplemented


def encode(value: Any) -> tuple[str, list]:
    """``(codec, chunks)``: the value's bytes as a list of bytes-like chunks (see module doc)."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    try:
        _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(value)
        codec, main = "pickle", out.getbuffer()
    except (_NotPortable, pickle.PicklingError, TypeError, AttributeError) as first:
        try:
            import cloudpickle
        except ImportError:
            raise Unstorable(_why(first) if not isinstance(first, _NotPortable) else
                             "it holds objects defined in the notebook (__main__), and "
                             "cloudpickle is not installed (pip install cloudpickle)") from None
        buffers = []
        try:
            main = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise Unstorable(_why(exc)) from None
        codec = "cloudpickle"
    except RecursionError:
        raise Unstorable("it is nested too deeply to pickle") from None
    except Exception as exc:  # a __reduce__ that raises, ...
        raise Unstorable(_why(exc)) from None
    raws = [b.raw() for b in buffers]
    head = _MAGIC + _HEAD.pack(len(raws), len(main)) + b"".join(struct.pack("<Q", r.nbytes) for r in raws)
    return codec, [head, main, *raws]


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The value ``encode`` wrote (``data`` may be a writable buffer: arrays then share it)."""
    view = memoryview(data)
    if bytes(view[:len(_MAGIC)]) != _MAGIC:
        raise StoreError("a stored result is not in a format this cmbagent-jupyter reads")
    pos = len(_MAGIC)
    n, main_len = _HEAD.unpack_from(view, pos)
    pos += _HEAD.size
    sizes = struct.unpack_from(f"<{n}Q", view, pos)
    pos += 8 * n
    main = view[pos:pos + main_len]
    pos += main_len
    bufs = []
    for size in sizes:
        bufs.append(view[pos:pos + size])
        pos += size
    return pickle.loads(main, buffers=bufs)


def _why(exc: BaseException) -> str:
    return f"it cannot be pickled ({type(exc).__name__}: {exc})"


@dataclass
class Stored:
    """One persisted result, as the ``results`` table holds it."""

    fingerprint: str
    codec: str
    size: int
    data: Optional[bytes]  # inline, or None when in a file
    location: Optional[str]  # the file, or None when inline

    def info(self) -> dict:
        """What the completion event says about it."""
        return {"stored": True, "size": self.size, "codec": self.codec, "error": None,
                "fingerprint": self.fingerprint}


def unstored_info(fingerprint: str, why: str) -> dict:
    return {"stored": False, "size": None, "codec": None, "error": why, "fingerprint": fingerprint}


class ResultArchive:
    """Where one store's results go: inline up to ``inline_max`` bytes, else files under ``base``.

    ``base``: a local directory, or an fsspec URL (``s3://bucket/prefix``,
    ``memory://x``); None keeps every result inline (PostgreSQL without ``results_url``).
    """

    def __init__(self, base: Optional[str], inline_max: int = DEFAULT_INLINE_MAX, keep: bool = True):
        if inline_max < 0:
            raise StoreError("result_inline_max must be >= 0")
        self.base = base
        self.inline_max = inline_max
        self.keep = keep
        self._remote = base is not None and urlsplit(base).scheme not in ("", "file")

    def persist(self, run_id: str, node_id: str, value: Any, fingerprint: str) -> Stored:
        """Encode ``value`` and, if large, write and sync its file; Unstorable if it cannot be."""
        codec, chunks = encode(value)
        size = sum(memoryview(c).nbytes for c in chunks)
        if self.base is None or size <= self.inline_max:
            return Stored(fingerprint, codec, size, b"".join(chunks), None)
        location = self._join(run_id, f"{quote(node_id, safe='')}.{uuid.uuid4().hex[:12]}.result")
        try:
            self._write(location, chunks)
        except OSError as exc:
            raise Unstorable(f"its file {location} could not be written ({exc})") from None
        return Stored(fingerprint, codec, size, None, location)

    def load(self, data: Optional[bytes], location: Optional[str]) -> Any:
        if location is None:
            return decode(data)
        try:
            if self._remote:
                fs, path = _fs(location)
                with fs.open(path, "rb") as f:
                    return decode(bytearray(f.read()))
            with open(location, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                buf = _read_buffer(size)
                if f.readinto(buf) != size:
                    raise EngineError(f"the stored result's file {location} is shorter than it was")
            return decode(buf)
        except FileNotFoundError:
            raise EngineError(f"the stored result's file {location} is gone") from None

    def remove_run(self, run_id: str, locations: Iterable[str] = ()) -> None:
        """Delete the run's result files: its directory under ``base``, and the
        directories of ``locations`` (the files its rows name, which a process with
        another ``results_url`` may have written: a kernel's, where a server names only
        the database)."""
        where = {loc.rsplit("/", 1)[0] for loc in locations}
        if self.base is not None:
            where.add(self._join(run_id))
        for directory in where:
            _remove_tree(directory)

    def _join(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts]) if self._remote else os.path.join(self.base, *parts)

    def _write(self, location: str, chunks: list) -> None:
        if self._remote:
            fs, path = _fs(location)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                for c in chunks:
                    f.write(c)
            return
        os.makedirs(os.path.dirname(location), exist_ok=True)
        tmp = location + ".tmp"
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, location)


def _read_buffer(size: int):
    """A writable buffer of ``size`` bytes to read a result file into, not zeroed first:
    numpy's when it is installed (its allocator asks the kernel for huge pages, so a
    100 MB array reads back as fast as ``numpy.load`` reads it: 2x faster than into a
    bytearray here), else a bytearray. The decoded arrays share it."""
    try:
        import numpy
    except ImportError:
        return bytearray(size)
    return numpy.empty(size, numpy.uint8)


def _remove_tree(where: str) -> None:
    """Delete a directory and what it holds, local or at an fsspec URL; gone is fine."""
    parts = urlsplit(where)
    if parts.scheme in ("", "file"):
        import shutil

        shutil.rmtree(parts.path if parts.scheme else where, ignore_errors=True)
        return
    fs, path = _fs(where)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _fs(url: str):
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise StoreError(f"results_url {url!r} needs fsspec: pip install fsspec") from None
    return url_to_fs(url)


@functools.lru_cache(maxsize=4096)
def code_fingerprint(fn: Callable[..., Any]) -> str:
    """A short hash of a step's code: its source, or its bytecode where there is none."""
    try:
        data = inspect.getsource(fn).encode("utf-8", "backslashreplace")
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        data = (_code_bytes(code) if code is not None
                else f"{type(fn).__module__}.{type(fn).__qualname__}".encode())
    return hashlib.sha256(data).hexdigest()[:16]


def _code_bytes(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode())
    return b"\x00".join(parts)


__all__ = ["ResultArchive", "Stored", "Unstorable", "encode", "decode", "code_fingerprint",
           "unstored_info", "DEFAULT_INLINE_MAX"]
