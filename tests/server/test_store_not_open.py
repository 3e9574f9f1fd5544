"""A server whose store cannot be opened says so loudly and answers 503 with the reason
(never 404: the extension is loaded), retries in the background, and serves the store
as soon as it opens, without a restart."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

from server_support import finished_run
from support import free_port

import engine


@pytest.fixture
def blocked(tmp_path):
    """A SQLite store under a path that is a file: it cannot be created until unblocked."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return blocker


@pytest.fixture
def jp_server_config(blocked, request):
    marker = request.node.get_closest_marker("cmbagent_app")
    url = marker.kwargs["db_url"] if marker else "sqlite:///" + str(blocked / "runs.sqlite").lstrip("/")
    return {"ServerApp": {"jpserver_extensions": {"cmbagent_jupyter": True}},
            "CmbAgentApp": {"db_url": url}}


async def status(jp_fetch, *path, **kwargs):
    try:
        r = await jp_fetch("cmbagent", "api", *path, raise_error=False, **kwargs)
    except HTTPClientError as exc:
        r = exc.response
    return r.code, r


def logged_errors(capfd) -> list[str]:
    """The server's error lines so far (its log goes to stderr)."""
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("[E ")]


async def test_routes_answer_503_with_the_reason_until_the_store_opens(capfd, jp_fetch, jp_ws_fetch,
                                                                        blocked, cmbagent_app):
    errors = logged_errors(capfd)
    assert any("cannot open the run store" in m and "runs.sqlite" in m and "File exists" in m
               for m in errors), errors
    for path in (("runs",), ("runs", "some-run"), ("runs", "some-run", "events")):
        code, r = await status(jp_fetch, *path)
        assert code == 503, (path, code)
        body = json.loads(r.body)
        assert body["message"].startswith("the run store is not open: FileExistsError")
        assert r.headers["Retry-After"].isdigit()
    code, r = await status(jp_fetch, "runs", "some-run", "commands", method="POST",
                           body=json.dumps({"command_id": "c", "action": "pause"}))
    assert code == 503
    with pytest.raises(HTTPClientError) as err:
        await jp_ws_fetch("cmbagent", "api", "ws")
    assert err.value.code == 503
    assert (await status(jp_fetch, "schema"))[0] == 200  # needs no store

    # the disk is fixed: the server finds its store by itself
    blocked.unlink()
    blocked.mkdir()
    url = "sqlite:///" + str(blocked / "runs.sqlite").lstrip("/")
    codes = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not codes or codes[-1] != 200:
        assert loop.time() < deadline, f"the store never opened: {codes}"
        await asyncio.sleep(0.2)
        codes.append((await status(jp_fetch, "runs"))[0])
    assert set(codes[:-1]) <= {503}
    assert "the run store is open now" in capfd.readouterr().err
    store = engine.open_store(url)
    run = finished_run(store)
    r = await jp_fetch("cmbagent", "api", "runs")
    assert [x["id"] for x in json.loads(r.body)["runs"]] == [run.id]
    ws = await jp_ws_fetch("cmbagent", "api", "ws")
    assert json.loads(await ws.read_message())["type"] == "hello"
    ws.close()
    await cmbagent_app.stop_extension()  # its store calls end before the store closes
    engine.store.close_store(url)


@pytest.mark.cmbagent_app(db_url=f"postgresql://cmbagent:secret-pw@127.0.0.1:{free_port()}/nobody"
                                 "?connect_timeout_s=1")
async def test_a_store_nobody_listens_on_is_503_and_never_leaks_the_password(capfd, jp_fetch):
    code, r = await status(jp_fetch, "runs")
    assert code == 503
    message = json.loads(r.body)["message"]
    assert "the run store is not open" in message and "Connection refused" in message
    logged = "\n".join(logged_errors(capfd))
    assert "cannot open the run store" in logged
    assert "secret-pw" not in message + logged
