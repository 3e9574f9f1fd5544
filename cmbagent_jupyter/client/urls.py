"""The URLs of a server: its HTTP base, its protocol socket, a token given in the URL."""

from __future__ import annotations

from typing import Optional
from urllib.parse import parse_qsl, urlsplit, urlunsplit


def _split(url: str):
    parts = urlsplit(url if "://" in url else "http://" + url)
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return parts, path


def http_base_url(url: str) -> str:
    """``http(s)://host:port{base_url}`` of a server URL (ws/wss are mapped, query dropped)."""
    parts, path = _split(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def ws_url(url: str) -> str:
    """The protocol's socket URL, ``ws(s)://host:port{base_url}cmbagent/api/ws``, for a server URL."""
    parts, path = _split(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path + "cmbagent/api/ws", "", ""))


def token_from_url(url: str) -> Optional[str]:
    """The ``?token=`` of a URL, if it has one."""
    parts = urlsplit(url)
    return dict(parse_qsl(parts.query)).get("token")
