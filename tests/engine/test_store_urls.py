"""Store URLs as users see them: a database password never shows, in any of the forms
libpq takes it (user info, ``?password=``, key=value), nor in errors that quote it."""

from __future__ import annotations

import traceback
from urllib.parse import urlsplit

import pytest

import engine
from engine import StoreError
from engine.store import PostgresStore, redact_url

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://ann:{SECRET}@db.example:5432/runs",
     "postgresql://ann:***@db.example:5432/runs"),
    (f"postgresql://ann:{SECRET}@with@at@db.example/runs", "postgresql://ann:***@db.example/runs"),
    (f"postgresql://ann@db.example/runs?password={SECRET}&sslmode=require",
     "postgresql://ann@db.example/runs?password=***&sslmode=require"),
    (f"postgresql://db.example/runs?sslmode=require&PassWord={SECRET}",
     "postgresql://db.example/runs?sslmode=require&PassWord=***"),
    (f"postgresql://ann@db.example/runs?sslpassword={SECRET}", "postgresql://ann@db.example/runs?sslpassword=***"),
    (f"host=db.example password={SECRET} dbname=runs", "host=db.example password=*** dbname=runs"),
    (f"host=db.example password = '{SECRET} with \\' quote' dbname=runs",
     "host=db.example password = *** dbname=runs"),
    ("postgresql://ann@db.example/runs", "postgresql://ann@db.example/runs"),
])
def test_every_form_of_password_is_redacted(url, shown):
    assert redact_url(url) == shown


def test_a_password_quoted_back_by_the_driver_is_redacted_too():
    url = f"postgresql://ann:{SECRET}%zz@db.example/runs"
    error = f'invalid percent-encoded token: "{SECRET}%zz"'
    assert SECRET not in redact_url(error, url)


def with_password(pg_url: str, form: str) -> str:
    """``pg_url`` (a trust-authenticated server: any password is accepted) with a password."""
    parts = urlsplit(pg_url)
    if form == "userinfo":
        return pg_url.replace(f"//{parts.username}@", f"//{parts.username}:{SECRET}@")
    if form == "query":
        return f"{pg_url}?password={SECRET}"
    return (f"host={parts.hostname} port={parts.port} user={parts.username} "
            f"dbname={parts.path.lstrip('/')} password='{SECRET}'")


@pytest.mark.parametrize("form", ["userinfo", "query", "keyvalue"])
def test_a_store_opened_with_a_password_never_shows_it(pg_url, form):
    url = with_password(pg_url, form)
    store = engine.open_store(url) if form != "keyvalue" else PostgresStore(url)
    try:
        assert store.runs() == []  # it connected, with the password
        assert SECRET not in store.url and SECRET not in repr(store)
        assert "***" in store.url
    finally:
        if form == "keyvalue":
            store.close()
        else:
            engine.store.close_store(url)


def refused(url: str, opener=engine.open_store) -> str:
    """What a user sees of a store that cannot be opened: the message and the traceback."""
    with pytest.raises(StoreError) as info:
        opener(url)
    return "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("url", [
    f"postgresql://ann:{SECRET}@127.0.0.1:1/runs",
    f"postgresql://ann@127.0.0.1:1/runs?password={SECRET}",
    f"postgresql://ann:{SECRET}%zz@127.0.0.1:1/runs",  # psycopg quotes the bad token back
    f"mysql://ann:{SECRET}@db.example/runs",  # not a store URL at all
    f"sqlite://ann:{SECRET}@db.example/runs",
])
def test_errors_about_a_store_never_show_its_password(url):
    shown = refused(url)
    assert SECRET not in shown
    assert "***" in shown


def test_errors_from_a_key_value_conninfo_never_show_its_password():
    shown = refused(f"host=127.0.0.1 port=1 password={SECRET} connect_timeout=1", PostgresStore)
    assert SECRET not in shown and "cannot connect" in shown
