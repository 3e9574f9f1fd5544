"""Passwords out of store URLs, and out of anything that may echo one (driver errors).

libpq takes a password in three places: the URL's user info (``user:pw@host``), a URL
query parameter (``?password=pw``) and a key=value conninfo string (``password=pw``
or ``password = 'p w'``); ``sslpassword`` likewise. A driver's error may quote a piece
of the string it could not parse (``invalid percent-encoded token: "p%w"``), so the
password's own text is removed too, wherever it appears.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import unquote, unquote_plus

MASK = "***"

_USERINFO = re.compile(r"(://[^/?#@:\s]*:)([^/?#\s]*)@")
_KEYWORD = re.compile(r"((?<![\w-])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s#]*)", re.IGNORECASE)
#: Shorter secrets are only removed where they stand as a password: replacing every
#: occurrence of "ab" would garble the message without hiding much.
_MIN_LITERAL = 4


def _secrets(url: str) -> set[str]:
    found = {m.group(2) for m in _USERINFO.finditer(url)}
    for m in _KEYWORD.finditer(url):
        value = m.group(2)
        found.add(value)
        if value.startswith("'"):
            found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return {s for s in found if len(s) >= _MIN_LITERAL}


def redact_url(text: str, url: Optional[str] = None) -> str:
    """``text`` (a store URL, or a message that may quote one) without passwords.

    ``url``: the URL or conninfo ``text`` is about, when it is not ``text`` itself (an
    error from connecting with it): its password is removed wherever ``text`` repeats it.
    """
    secrets = _secrets(text) | (_secrets(url) if url else set())
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _KEYWORD.sub(lambda m: m.group(1) + MASK, text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


__all__ = ["redact_url", "MASK"]
