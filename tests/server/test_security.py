"""Authentication, Origin and XSRF checks on the socket and the REST API, and the frame
size limit. Each refusal is paired with the same request made acceptable (a positive
control), so a refusal cannot pass for the wrong reason."""

import json
from http.cookies import SimpleCookie

import pytest
from tornado.httpclient import HTTPClientError

from server_support import finished_run, node_status, steerable_run
from support import wait_until_async

FOREIGN = "http://evil.example.com"


async def login_cookie(jp_fetch, jp_http_port) -> str:
    """The login cookie jupyter_server sets on a token-authenticated request.

    Its name is ``username-<host>-<port>``: jp_fetch talks to 127.0.0.1, so the cookie is
    good for 127.0.0.1 only (the ws_open fixture connects there too)."""
    r = await jp_fetch("api", "status")
    cookies = SimpleCookie()
    for header in r.headers.get_list("Set-Cookie"):
        cookies.load(header)
    name = f"username-127-0-0-1-{jp_http_port}"
    assert name in cookies, f"no login cookie {name} in {list(cookies)}"
    return f"{name}={cookies[name].value}"


# -- the socket ----------------------------------------------------------------------------


async def test_socket_without_credentials_is_refused(ws_connect):
    with pytest.raises(HTTPClientError) as e:
        await ws_connect(headers={"Authorization": ""})
    assert e.value.code == 403
    ws = await ws_connect()  # control: with the token
    await ws.expect("hello")


async def test_socket_with_a_wrong_token_is_refused(ws_open):
    with pytest.raises(HTTPClientError) as e:
        await ws_open(headers={"Authorization": "token not-the-token"})
    assert e.value.code == 403


async def test_socket_login_cookie_and_origin(jp_fetch, jp_http_port, ws_open):
    cookie = await login_cookie(jp_fetch, jp_http_port)
    # a page on another site riding the user's cookie: refused
    with pytest.raises(HTTPClientError) as e:
        await ws_open(headers={"Cookie": cookie, "Origin": FOREIGN})
    assert e.value.code == 403
    # controls: the same cookie from the server's own origin, or with no Origin, works
    for headers in ({"Cookie": cookie, "Origin": f"http://127.0.0.1:{jp_http_port}"}, {"Cookie": cookie}):
        ws = await ws_open(headers=headers)
        await ws.expect("hello")
    # and a forged cookie is no credential at all
    name = cookie.split("=", 1)[0]
    with pytest.raises(HTTPClientError) as e:
        await ws_open(headers={"Cookie": f"{name}=forged"})
    assert e.value.code == 403


async def test_socket_token_from_a_foreign_origin_is_accepted(ws_open, ws_url, token):
    """A token is an explicit credential (scripts, other tools): no Origin check."""
    ws = await ws_open(headers={"Authorization": f"token {token}", "Origin": FOREIGN})
    await ws.expect("hello")
    ws = await ws_open(headers={"Origin": FOREIGN}, url=f"{ws_url}?token={token}")
    await ws.expect("hello")


@pytest.mark.cmbagent_app(max_frame_bytes=2048)
async def test_oversize_frame_closes_with_1009(ws_connect, cmbagent_app):
    assert cmbagent_app.max_frame_bytes == 2048
    ws = await ws_connect()
    await ws.expect("hello")
    # at the limit: answered
    pad = 2048 - len(json.dumps({"type": "ping", "id": ""}))
    frame = json.dumps({"type": "ping", "id": "x" * pad})
    assert len(frame.encode()) == 2048
    await ws.send(frame)
    assert (await ws.expect("pong"))["id"] == "x" * pad
    # one byte over: the socket is closed with "message too big"
    await ws.send(json.dumps({"type": "ping", "id": "x" * (pad + 1)}))
    assert await ws.recv() is None
    assert ws.conn.close_code == 1009
    # other sockets are not affected
    other = await ws_connect()
    await other.expect("hello")


# -- REST ----------------------------------------------------------------------------------


async def test_rest_without_credentials_is_refused(store, jp_fetch):
    run = finished_run(store)
    for parts in (("runs",), ("runs", run.id), ("runs", run.id, "events"), ("schema",)):
        r = await jp_fetch("cmbagent", "api", *parts, headers={"Authorization": ""}, raise_error=False)
        assert r.code == 403, parts
        r = await jp_fetch("cmbagent", "api", *parts)  # control
        assert r.code == 200, parts
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST",
                       body=json.dumps({"command_id": "x", "action": "pause"}),
                       headers={"Authorization": ""}, raise_error=False)
    assert r.code == 403


async def test_rest_cookie_get_works_post_needs_xsrf(store, jp_fetch, jp_http_port):
    run, release = steerable_run(store)
    await wait_until_async(lambda: node_status(store, run.id, "work") == "running", what="the step to start")
    cookie = await login_cookie(jp_fetch, jp_http_port)
    no_token = {"Authorization": "", "Cookie": cookie}
    r = await jp_fetch("cmbagent", "api", "runs", headers=dict(no_token))
    assert r.code == 200 and [x["id"] for x in json.loads(r.body)["runs"]] == [run.id]

    def post(headers, command_id):
        return jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST",
                        body=json.dumps({"command_id": command_id, "action": "pause"}),
                        headers=headers, raise_error=False)

    # cookie, no XSRF token: refused, and nothing was recorded
    r = await post(dict(no_token), "by-cookie-no-xsrf")
    assert r.code == 403
    assert store.command_status("by-cookie-no-xsrf") is None
    # cookie with the XSRF double-submit (as the Jupyter front end does): works
    r = await post({"Authorization": "", "Cookie": f"{cookie}; _xsrf=xyz", "X-XSRFToken": "xyz"},
                   "by-cookie-with-xsrf")
    assert r.code == 200, r.body
    ack = json.loads(r.body)
    assert ack["type"] == "ack" and ack["ok"] is True and ack["command_id"] == "by-cookie-with-xsrf"
    await wait_until_async(lambda: run.state == "paused", what="the run to pause")
    # the token alone: works (resume, so the run can finish)
    r = await jp_fetch("cmbagent", "api", "runs", run.id, "commands", method="POST",
                       body=json.dumps({"command_id": "by-token", "action": "resume"}))
    assert r.code == 200 and json.loads(r.body)["ok"] is True
    await wait_until_async(lambda: run.state == "executing", what="the run to resume")
    release.set()
    await wait_until_async(lambda: run.state == "completed", what="the run to complete")
