"""Owner isolation across two users: each lists, streams and controls only their own runs,
and someone else's run is answered exactly as a run that does not exist; ``share_runs``
lifts that. With jupyter_server's stock identity provider the user is the server's own."""

import json
import uuid

import pytest
from jupyter_server.auth.identity import IdentityProvider, LegacyIdentityProvider, PasswordIdentityProvider
from server_support import finished_run, gated_run, node_status, steerable_run
from support import wait_until_async
from two_users import TwoUsers, auth

from engine.owners import default_owner

two_users = pytest.mark.identity_provider.with_args(TwoUsers)  # (a class alone would be decorated)

#: A run id no run has, shaped like a real one.
UNKNOWN = uuid.uuid4().hex


@pytest.fixture
def jp_auth_header(jp_auth_header, jp_serverapp):
    """On a two-user server, requests that name no user (the fixtures' own, such as the
    schema fetch) are alice's: the server's token names nobody there."""
    return auth("alice") if isinstance(jp_serverapp.identity_provider, TwoUsers) else jp_auth_header


async def rest(jp_fetch, user, *parts, **kwargs):
    return await jp_fetch("cmbagent", "api", *parts, headers=auth(user), raise_error=False, **kwargs)


async def listed(jp_fetch, user) -> list[str]:
    r = await rest(jp_fetch, user, "runs")
    assert r.code == 200, r.body
    return [run["id"] for run in json.loads(r.body)["runs"]]


def as_run(obj, run_id: str):
    """``obj`` (an answer about the UNKNOWN run) as it reads about ``run_id``."""
    return json.loads(json.dumps(obj).replace(UNKNOWN, run_id))


async def assert_rest_answers_as_unknown(jp_fetch, user, run_id):
    for parts, kwargs in [(("runs", "{}"), {}), (("runs", "{}", "events"), {}),
                          (("runs", "{}", "events"), {"params": {"after_seq": 1, "limit": 5}}),
                          (("runs", "{}", "commands"),
                           {"method": "POST", "body": json.dumps({"command_id": f"{user}-probe",
                                                                  "action": "pause"})})]:
        got = await rest(jp_fetch, user, *[p.format(run_id) for p in parts], **kwargs)
        ref = await rest(jp_fetch, user, *[p.format(UNKNOWN) for p in parts], **kwargs)
        assert ref.code == 404, (parts, ref.code, ref.body)
        assert (got.code, json.loads(got.body)) == (ref.code, as_run(json.loads(ref.body), run_id)), parts


async def assert_ws_answers_as_unknown(ws, run_id):
    for frame in [{"type": "subscribe", "run_id": "{}"}, {"type": "subscribe", "run_id": "{}", "after_seq": 0},
                  {"type": "request_state", "run_id": "{}"},
                  {"type": "command", "command_id": "probe", "run_id": "{}", "action": "pause"},
                  {"type": "command", "command_id": "probe-cancel", "run_id": "{}", "action": "cancel"}]:
        got = await ws.request(json.loads(json.dumps(frame).replace("{}", run_id)))
        ref = await ws.request(json.loads(json.dumps(frame).replace("{}", UNKNOWN)))
        assert [f["code"] for f in ref] == ["unknown_run"], ref
        assert got == as_run(ref, run_id), frame


def leaks(ws, run_id) -> list[dict]:
    """Frames that told this socket anything about ``run_id`` (refusals aside)."""
    return [f for f in ws.received if run_id in json.dumps(f)
            and not (f["type"] == "error" and f["code"] == "unknown_run")]


async def connect(ws_connect, user):
    ws = await ws_connect(headers=auth(user))
    await ws.expect("hello")
    return ws


async def until_done(ws, run_id):
    """Frames until the socket has both the run's completion event and its completed document."""
    seen = set()

    def done(m):
        if m["type"] == "run_changed" and m["run"]["id"] == run_id and m["run"]["state"] == "completed":
            seen.add("doc")
        if m["type"] == "events" and m["run_id"] == run_id and any(
                e["event_type"] == "workflow_completed" for e in m["events"]):
            seen.add("event")
        return seen == {"doc", "event"}

    return await ws.recv_until(done)


async def round_trip(ws):
    """A ping answered: everything the server had queued for ``ws`` before it has arrived."""
    await ws.request({"type": "ping", "id": "sync"})


@two_users
async def test_rest_and_socket_commands_reach_only_the_owners_runs(store, jp_fetch, ws_connect, cmbagent_app):
    assert cmbagent_app.share_runs is False  # the default
    runs = {}
    for user in ("alice", "bob"):
        runs[user], _ = steerable_run(store, name=f"{user}s", owner=user)
    for user, run in runs.items():
        await wait_until_async(lambda: node_status(store, run.id, "work") == "running", what=f"{user}'s step")
        assert store.run_doc(run.id)["owner"] == user
    for user, other in (("alice", "bob"), ("bob", "alice")):
        mine, theirs = runs[user], runs[other]
        assert await listed(jp_fetch, user) == [mine.id]
        r = await rest(jp_fetch, user, "runs", mine.id)
        assert r.code == 200 and json.loads(r.body)["run_id"] == mine.id
        r = await rest(jp_fetch, user, "runs", mine.id, "events")
        assert r.code == 200 and json.loads(r.body)["events"]
        await assert_rest_answers_as_unknown(jp_fetch, user, theirs.id)
        await assert_ws_answers_as_unknown(await connect(ws_connect, user), theirs.id)
        # the refused commands were not recorded, and the other's run runs on
        assert [store.command_status(c) for c in (f"{user}-probe", "probe", "probe-cancel")] == [None] * 3
        assert theirs.state == "executing"
    # each owner's own commands work: bob's over REST, alice's over the socket
    r = await rest(jp_fetch, "bob", "runs", runs["bob"].id, "commands", method="POST",
                   body=json.dumps({"command_id": "bob-pause", "action": "pause"}))
    assert r.code == 200 and json.loads(r.body)["ok"] is True
    await wait_until_async(lambda: runs["bob"].state == "paused", what="bob's run to pause")
    assert runs["alice"].state == "executing"
    ws = await connect(ws_connect, "alice")
    (ack,) = await ws.request({"type": "command", "command_id": "alice-cancel", "run_id": runs["alice"].id,
                               "action": "cancel"})
    assert ack["type"] == "ack" and ack["ok"] is True
    assert runs["alice"].wait(10) == "cancelled"
    assert runs["bob"].state == "paused"
    r = await rest(jp_fetch, "bob", "runs", runs["bob"].id, "commands", method="POST",
                   body=json.dumps({"command_id": "bob-cancel", "action": "cancel"}))
    assert r.code == 200 and json.loads(r.body)["ok"] is True
    assert runs["bob"].wait(10) == "cancelled"


@two_users
async def test_sockets_list_stream_and_obey_only_the_owner(store, ws_connect):
    runs, gates = {}, {}
    for user in ("alice", "bob"):
        runs[user], gates[user] = gated_run(store, progress=5, name=f"{user}s", owner=user)
        await wait_until_async(lambda: node_status(store, runs[user].id, "a") == "running",
                               what=f"{user}'s step")
    sockets = {user: await connect(ws_connect, user) for user in ("alice", "bob")}
    for user, ws in sockets.items():
        other = "bob" if user == "alice" else "alice"
        (listing,) = await ws.request({"type": "subscribe_runs"})
        assert [r["id"] for r in listing["runs"]] == [runs[user].id]
        await assert_ws_answers_as_unknown(ws, runs[other].id)
        assert [f["type"] for f in await ws.request({"type": "subscribe", "run_id": runs[user].id})] == [
            "snapshot"]
        assert store.command_status("probe") is None and store.command_status("probe-cancel") is None
        assert runs[other].state == "executing"

    # bob's run goes live to its end while alice follows the run list
    gates["bob"].set()
    await until_done(sockets["bob"], runs["bob"].id)
    await round_trip(sockets["alice"])  # the hub woke both sockets in the same tick
    # then alice's: bob hears nothing of it
    gates["alice"].set()
    frames = await until_done(sockets["alice"], runs["alice"].id)
    assert {f.get("run_id") or f["run"]["id"] for f in frames if f["type"] in ("events", "run_changed")} == {
        runs["alice"].id}
    await round_trip(sockets["bob"])
    assert leaks(sockets["alice"], runs["bob"].id) == []
    assert leaks(sockets["bob"], runs["alice"].id) == []


@two_users
@pytest.mark.cmbagent_app(share_runs=True)
async def test_share_runs_serves_everyone_everything(store, jp_fetch, ws_connect):
    a = finished_run(store, name="alices", owner="alice")
    b = finished_run(store, name="bobs", owner="bob")
    for user in ("alice", "bob"):
        assert await listed(jp_fetch, user) == [b.id, a.id]
        ws = await connect(ws_connect, user)
        (listing,) = await ws.request({"type": "subscribe_runs"})
        assert [r["id"] for r in listing["runs"]] == [b.id, a.id]
        for run in (a, b):
            r = await rest(jp_fetch, user, "runs", run.id)
            assert r.code == 200 and json.loads(r.body) == {"type": "snapshot", **store.snapshot(run.id)}
            assert await ws.request({"type": "request_state", "run_id": run.id}) == [
                {"type": "snapshot", **store.snapshot(run.id)}]


@pytest.mark.parametrize("provider", [
    pytest.param(None, id="default"),
    *(pytest.param(cls, id=cls.__name__, marks=pytest.mark.identity_provider.with_args(cls))
      for cls in (IdentityProvider, PasswordIdentityProvider, LegacyIdentityProvider))])
async def test_stock_identity_provider_user_is_the_servers_own(store, jp_serverapp, jp_fetch, ws_connect,
                                                                cmbagent_app, provider):
    """`jupyter lab` with a token: the anonymous user it authenticates sees the runs its
    kernels start (owned by the server's own user), not a stranger's."""
    assert type(jp_serverapp.identity_provider) is (provider or PasswordIdentityProvider)
    assert cmbagent_app.share_runs is False
    stranger = f"not-{default_owner()}"
    theirs = finished_run(store, name="theirs", owner=stranger)
    mine = finished_run(store, name="mine")
    assert store.run_doc(mine.id)["owner"] == default_owner()
    r = await jp_fetch("cmbagent", "api", "runs")
    assert json.loads(r.body)["runs"] == [store.run_doc(mine.id)]  # finished: the doc is final
    got = await jp_fetch("cmbagent", "api", "runs", theirs.id, raise_error=False)
    ref = await jp_fetch("cmbagent", "api", "runs", UNKNOWN, raise_error=False)
    assert (got.code, json.loads(got.body)) == (404, as_run(json.loads(ref.body), theirs.id))
    ws = await ws_connect()
    await ws.expect("hello")
    (listing,) = await ws.request({"type": "subscribe_runs"})
    assert [r["id"] for r in listing["runs"]] == [mine.id]
    assert await ws.request({"type": "request_state", "run_id": mine.id}) == [
        {"type": "snapshot", **store.snapshot(mine.id)}]
    await assert_ws_answers_as_unknown(ws, theirs.id)
