"""Opening stores: ``open_store()`` and the default location rule.

The default store is ``$CMBAGENT_DB_URL`` if set, else a SQLite file in the user's
Jupyter data directory. The kernel and the server extension both call
``default_url()``, so they meet in the same file with no configuration.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import StoreError
from .base import Commit, EventList, Lease, Store
from .postgres import PostgresStore
from .redact import redact_url
from .sqlite import SQLiteStore

__all__ = ["open_store", "open_existing_store", "close_store", "default_url", "Store", "SQLiteStore", "PostgresStore", "Commit",
           "EventList", "Lease", "redact_url"]

#: Options any store takes, and those only one kind does (as URL query or keyword).
def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


_flag.__name__ = "boolean"
_OPTIONS = {"max_events_per_run": int, "max_event_age_s": float,
            "results_url": str, "result_inline_max": int, "keep_results": _flag}
_SQLITE_OPTIONS = {"busy_timeout_s": float}
_POSTGRES_OPTIONS = {"pool_size": int, "connect_timeout_s": float}
_POSTGRES_SCHEMES = ("postgresql", "postgres")

def jupyter_data_dir() -> Path:
    """Jupyter's per-user data directory, computed as jupyter_core does (without importing it)."""
    env = os.environ.get("JUPYTER_DATA_DIR")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Jupyter"
    if os.name == "nt":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) / "jupyter" if appdata else home / ".jupyter" / "data"
    xdg = os.environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(xdg) / "jupyter"


def default_url() -> str:
    """``$CMBAGENT_DB_URL``, else ``sqlite:///<jupyter data dir>/cmbagent/runs.sqlite``."""
    url = os.environ.get("CMBAGENT_DB_URL")
    if url:
        return url
    return "sqlite:///" + str(jupyter_data_dir() / "cmbagent" / "runs.sqlite").lstrip("/")


_cache: dict[tuple[int, str], Store] = {}
_cache_lock = threading.Lock()


def open_store(url: Optional[str] = None, **options) -> Store:
    """Open (creating or upgrading if needed) the store at ``url``; the default store without one.

    URLs: ``sqlite:///abs/path.sqlite`` (or a plain file path), or
    ``postgresql://user:password@host:port/dbname`` (libpq's URL; its own query
    parameters such as ``sslmode`` pass through). Options — ``max_events_per_run``,
    ``max_event_age_s``, and for step results ``results_url`` (a directory or an fsspec
    URL for results above ``result_inline_max`` bytes; default: ``<file>.results/``
    beside a SQLite file, inside the database for PostgreSQL) and ``keep_results``
    (default true) for both; ``busy_timeout_s`` for SQLite; ``pool_size`` and
    ``connect_timeout_s`` for PostgreSQL — may be keyword arguments or URL query
    parameters. One store object is shared per process and URL. Opening a store marks
    runs whose executor died as failed (``executor_lost``).
    """
    factory, target, options = _resolve(url or default_url(), options)
    key = (os.getpid(), f"{target}?{sorted(options.items())}")
    with _cache_lock:
        store = _cache.get(key)
        if store is None or store.closed:
            store = _cache[key] = factory(target, **options)
    store.reap()
    return store


def open_existing_store(url: Optional[str] = None) -> Optional[Store]:
    """``open_store(url)`` if that store already exists, else None (a SQLite file is
    not created; a PostgreSQL database is assumed to exist: its server says if not)."""
    factory, target, _ = _resolve(url or default_url(), {})
    if factory is SQLiteStore and not os.path.exists(target):
        return None
    return open_store(url)


def close_store(url: Optional[str] = None) -> None:
    """Close this process's shared store object(s) for ``url`` (its executors stop first).

    The next ``open_store(url)`` opens a new one.
    """
    _, target, _ = _resolve(url or default_url(), {})
    with _cache_lock:
        doomed = [k for k in _cache if k[0] == os.getpid() and k[1].rsplit("?", 1)[0] == target]
        stores = [_cache.pop(k) for k in doomed]
    for store in stores:
        store.close()


def _resolve(url: str, options: dict):
    """(store class, what it opens, options) for a store URL; StoreError if it is not one."""
    options = dict(options)
    parts = urlsplit(url)
    postgres = parts.scheme in _POSTGRES_SCHEMES
    known = {**_OPTIONS, **(_POSTGRES_OPTIONS if postgres else _SQLITE_OPTIONS)}
    passthrough = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known:
            if postgres:  # libpq's own parameters (sslmode, application_name, ...)
                passthrough.append((key, value))
                continue
            raise StoreError(f"unknown store option {key!r} in {redact_url(url)!r}; known: {', '.join(known)}")
        try:
            options.setdefault(key, known[key](value))
        except ValueError:
            raise StoreError(f"store option {key}={value!r} is not a {known[key].__name__}") from None
    for key in options:
        if key not in known:
            raise StoreError(f"unknown store option {key!r}; known: {', '.join(known)}")
    if postgres:
        return PostgresStore, urlunsplit(parts._replace(query=urlencode(passthrough))), options
    return SQLiteStore, _sqlite_path(url, parts), options


def _sqlite_path(url: str, parts) -> str:
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and os.name == "nt"):
        path = url.split("?", 1)[0]
        path = path[len("file://"):] if path.startswith("file://") else path
    elif parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise StoreError(f"sqlite URL {redact_url(url)!r} must look like sqlite:///absolute/path.sqlite")
    else:
        raise StoreError(f"unsupported store URL {redact_url(url)!r}: expected sqlite:///path or "
                         "postgresql://user@host/dbname")
    if not path:
        raise StoreError(f"store URL {redact_url(url)!r} names no file")
    return os.path.abspath(path)
