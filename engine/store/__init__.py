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
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import StoreError
from .base import Commit, EventList, Lease, Store
from .sqlite import SQLiteStore

__all__ = ["open_store", "default_url", "Store", "SQLiteStore", "Commit", "EventList", "Lease"]

_OPTIONS = {"max_events_per_run": int, "max_event_age_s": float, "busy_timeout_s": float}


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
    """Open (creating if needed) the store at ``url``; the default store without one.

    URLs: ``sqlite:///abs/path.sqlite`` (or a plain file path). Options such as
    ``max_events_per_run`` and ``max_event_age_s`` may be keyword arguments or URL
    query parameters. One store object is shared per process and URL. Opening a store
    marks runs whose executor died as failed (``executor_lost``).
    """
    url = url or default_url()
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in query.items():
        if key not in _OPTIONS:
            raise StoreError(f"unknown store option {key!r} in {url!r}; known: {', '.join(_OPTIONS)}")
        try:
            options.setdefault(key, _OPTIONS[key](value))
        except ValueError:
            raise StoreError(f"store option {key}={value!r} is not a {_OPTIONS[key].__name__}") from None
    for key in options:
        if key not in _OPTIONS:
            raise StoreError(f"unknown store option {key!r}; known: {', '.join(_OPTIONS)}")
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and os.name == "nt"):
        path = url.split("?", 1)[0]
        path = path[len("file://"):] if path.startswith("file://") else path
    elif parts.scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise StoreError(f"sqlite URL {url!r} must look like sqlite:///absolute/path.sqlite")
    else:
        raise StoreError(f"unsupported store URL {url!r}: expected sqlite:///path")
    if not path:
        raise StoreError(f"store URL {url!r} names no file")
    key = (os.getpid(), f"{os.path.abspath(path)}?{sorted(options.items())}")
    with _cache_lock:
        store = _cache.get(key)
        if store is None:
            store = _cache[key] = SQLiteStore(path, **options)
    store.reap()
    return store
