"""Fault 5: replicas. Three Jupyter server processes on one PostgreSQL store; one is killed.

The run executes in a writer subprocess and streams a few thousand events. Six clients,
two per replica, each follow it from a different cursor (0: the whole log; mid: the
events after the middle of the log as it was when they subscribed; live: a snapshot,
then live). Every client has the three URLs, its own replica first; the two clients
of a replica list the other two in opposite orders, so when their replica is SIGKILLed
mid-run one moves to each survivor. There they resume their cursors, and at the end
every client has exactly the store's log: lost / duplicated / reordered = 0 / 0 / 0,
and its state equals the store's snapshot.

Commands go through every replica, before and after the kill (pause through one,
resume through another, over the WebSocket and over REST): each reaches the executor
in the writer process, the run really pauses (not one event is written while it is
paused) and resumes, and every client's stream shows both.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

from checker import assert_clean, check
from cmbagent_jupyter.client import Client
from engine.snapshot import RunState
from fault_support import App, ServerProc
from support import wait_until_async

RATE = 600  # events/s, until the test tells the writer to stop
BACKLOG = 1500  # events in the log before the clients subscribe
KINDS = ("0", "mid", "live")  # where a client starts following the run
EMITTED = {"step_progress", "agent_message", "cost_update"}  # what the writer's steps record


@pytest.fixture
def store_url(pg_url):
    """Every process of these tests (servers, writer, test) opens one PostgreSQL database."""
    return pg_url


@dataclass
class Member:
    """One client of the test: its application, its home replica and its cursor."""

    name: str
    app: App
    home: int
    kind: str
    at_kill: Optional[int] = None  # the client's last seq when its replica was killed
    t_live: Optional[float] = None  # when it was live again after the kill
    at_live: Optional[int] = None  # its last seq then
    t_first: Optional[float] = None  # ... and had its first event from the new replica
    served_by: list = field(default_factory=list)  # (url, server_id) of its connections

    @property
    def client(self) -> Client:
        return self.app.client

    def seq(self, run_id: str) -> int:
        return self.client.last_seq(run_id) or 0


async def all_reach(members: list[Member], run_id: str, seq: int, timeout: float = 60.0) -> None:
    """Wait until every client is live and has applied every event up to ``seq``."""
    await asyncio.gather(*(m.client.wait_for(
        lambda m=m: m.client.connection_state == "live" and m.seq(run_id) >= seq, timeout)
        for m in members))


async def send(via, run_id: str, action: str) -> dict:
    """A command through one replica: ``("ws", member)`` over that client's WebSocket,
    ``("rest", server)`` as a POST to that server."""
    transport, target = via
    if transport == "ws":
        return await target.client.command(run_id, action, timeout=30)
    return await target.command(run_id, action)


def describe(via) -> str:
    transport, target = via
    if transport == "ws":
        return f"WS of {target.name} on {target.client.url}"
    return f"REST on {target.name}"


async def pause_and_resume(store, members: list[Member], run_id: str, pause_via, resume_via) -> dict:
    """Pause through one replica, resume through another; check it took effect everywhere."""
    t0 = time.monotonic()
    ack = await send(pause_via, run_id, "pause")
    assert ack["ok"], f"pause via {describe(pause_via)} refused: {ack}"
    await wait_until_async(lambda: store.run_doc(run_id)["state"] == "paused", 30,
                           f"the run to be paused (pause via {describe(pause_via)})", interval=0.02)
    t_paused = time.monotonic()
    paused_seq = store.bounds(run_id)[1]
    [ev] = store.events(run_id, paused_seq - 1, 1).dicts()
    assert ev["event_type"] == "workflow_paused", ev
    # every client, on whichever replica, sees the pause; the live ones' state says so
    await all_reach(members, run_id, paused_seq, 30)
    t_seen = time.monotonic()
    for m in members:
        if m.kind == "live":
            assert m.client.state(run_id).run["state"] == "paused", m.name
        assert any(e["seq"] == paused_seq and e["event_type"] == "workflow_paused"
                   for e in m.app.events()), f"{m.name} has no workflow_paused at {paused_seq}"
    assert store.bounds(run_id)[1] == paused_seq, "events were written while the run was paused"

    t1 = time.monotonic()
    ack = await send(resume_via, run_id, "resume")
    assert ack["ok"], f"resume via {describe(resume_via)} refused: {ack}"
    await wait_until_async(lambda: store.bounds(run_id)[1] > paused_seq + 50, 30,
                           f"the run to emit again (resume via {describe(resume_via)})", interval=0.02)
    t_resumed = time.monotonic()
    after = store.events(run_id, paused_seq, 50).dicts()
    assert after[0]["event_type"] == "workflow_resumed", after[0]
    resumed_seq = after[0]["seq"]
    assert any(e["event_type"] in EMITTED for e in after), "the steps did not emit after the resume"
    assert store.run_doc(run_id)["state"] == "executing"
    await all_reach(members, run_id, paused_seq + 50, 30)
    for m in members:
        assert any(e["seq"] == resumed_seq and e["event_type"] == "workflow_resumed"
                   for e in m.app.events()), f"{m.name} has no workflow_resumed at {resumed_seq}"
    return {"pause": describe(pause_via), "resume": describe(resume_via),
            "paused_seq": paused_seq, "resumed_seq": resumed_seq,
            "pause_s": t_paused - t0, "seen_s": t_seen - t_paused, "resume_s": t_resumed - t1}


def client_snapshot(m: Member, run_id: str, log: list[dict], snapshot: Optional[dict]) -> Optional[dict]:
    """The client's state at the end: its own view (live), or the state its events lead
    to from its cursor (the log's first ``after_seq`` events, then what it received)."""
    if m.app.after_seq is None:
        return snapshot
    try:
        return RunState.replay(run_id, log[:m.app.after_seq] + m.app.events()).snapshot()
    except Exception as exc:  # its events do not even apply: the checker says why
        print(f"faults[replicas]: {m.name}: its events do not replay: {exc!r}")
        return None


async def test_replica_killed_mid_run_clients_move_to_the_others(spawn, open_db, seed):
    rng = random.Random(seed)
    t_start = time.monotonic()
    replicas: list[ServerProc] = [spawn.server(f"replica-{n}") for n in "abc"]
    writer = spawn.writer("--until-stop", "--rate", str(RATE))
    started = await asyncio.gather(*(r.wait_ready(120) for r in replicas))
    run_id = await writer.run_id()
    store = open_db()
    assert store.url.startswith("postgresql"), store.url
    victim = rng.randrange(3)
    s1, s2 = (victim + 1) % 3, (victim + 2) % 3  # where the victim's two clients go

    members: list[Member] = []
    commands: list[dict] = []
    try:
        writer.go()
        await wait_until_async(lambda: store.bounds(run_id)[1] >= BACKLOG, 60,
                               f"{BACKLOG} events in the log", interval=0.02)
        mid = store.bounds(run_id)[1] // 2
        cursors = {"0": 0, "mid": mid, "live": None}
        for i, home in enumerate(replicas):
            for j in range(2):
                kind = KINDS[(i + j) % 3]  # every replica serves two kinds, each kind twice
                others = [replicas[(i + 1) % 3], replicas[(i + 2) % 3]]
                if j:
                    others.reverse()
                client = Client([home.url] + [o.url for o in others], home.token,
                                first_backoff=0.05, max_backoff=0.5, rng=random.Random(rng.random()))
                members.append(Member(f"client-{home.name[-1]}{j}", App(client, run_id, cursors[kind]),
                                      i, kind))
        await asyncio.gather(*(m.app.start(60) for m in members))
        for m in members:
            m.served_by.append((m.client.url, m.client.server_id))
        # each replica is one server process, and each client is on its own replica
        server_id = {}
        for m in members:
            assert m.client.url == replicas[m.home].url, m.name
            assert server_id.setdefault(m.client.url, m.client.server_id) == m.client.server_id
        assert len(set(server_id.values())) == 3

        # the backlog is delivered (cursor 0 and mid), the stream goes on
        await all_reach(members, run_id, store.bounds(run_id)[1] + rng.randint(100, 400))

        # commands before the kill: pause through the victim (WS), resume through s1 (REST)
        home_client = next(m for m in members if m.home == victim)
        commands.append(await pause_and_resume(store, members, run_id, ("ws", home_client),
                                               ("rest", replicas[s1])))

        # the victim is SIGKILLed mid-stream
        await all_reach(members, run_id, store.bounds(run_id)[1] + rng.randint(200, 600))
        moved = [m for m in members if m.home == victim]
        stayed = [m for m in members if m.home != victim]
        for m in members:
            m.at_kill = m.seq(run_id)
        log_at_kill = store.bounds(run_id)[1]
        assert store.run_doc(run_id)["state"] == "executing"
        for m in moved:
            def on_change(c, m=m):  # the moment it happens, whatever the test awaits
                if m.t_live is None and c.connection_state == "live" and c.stats.reconnects >= 1:
                    m.t_live, m.at_live = time.monotonic(), m.seq(run_id)
                if m.t_live is not None and m.t_first is None and m.seq(run_id) > m.at_live:
                    m.t_first = time.monotonic()
            m.client.add_listener(on_change)
        replicas[victim].kill()
        t_kill = time.monotonic()
        await asyncio.gather(*(m.client.wait_for(
            lambda m=m: m.client.stats.reconnects == 1 and m.client.connection_state == "live"
            and m.t_first is not None, 30) for m in moved))
        for m in moved:
            m.served_by.append((m.client.url, m.client.server_id))
        # one went to each survivor, which is still the same process
        assert sorted(m.client.url for m in moved) == sorted([replicas[s1].url, replicas[s2].url])
        for m in moved:
            assert m.client.server_id == server_id[m.client.url], m.name
        on_s1 = next(m for m in moved if m.client.url == replicas[s1].url)

        # the stream goes on for everybody, the moved clients on their new replicas
        await all_reach(members, run_id, store.bounds(run_id)[1] + rng.randint(1000, 2000))
        # commands after the kill: pause through s2 (REST), resume through s1 over the
        # WebSocket of a client that moved there
        commands.append(await pause_and_resume(store, members, run_id, ("rest", replicas[s2]),
                                               ("ws", on_s1)))
        await all_reach(members, run_id, store.bounds(run_id)[1] + 200)
        writer.stop_emitting()
        result = await writer.finished(120)
        snapshots = await asyncio.gather(*(m.app.catch_up(60) for m in members))
        t_done = time.monotonic()
    finally:
        for m in members:
            await m.app.close()

    log = store.events(run_id).dicts()
    truth = store.snapshot(run_id)
    assert log[0]["seq"] == 1 and len(log) == log[-1]["seq"]
    assert RunState.replay(run_id, log).snapshot() == truth  # the replay itself is right
    reports = {}
    for m, snap in zip(members, snapshots):
        report = reports[m.name] = check(m.app.items, log, client_snapshot(m, run_id, log, snap), truth,
                                         base=m.app.after_seq)
        stats = m.client.stats
        move = ""
        if m.t_live is not None:
            move = (f" moved {m.served_by[0][0]} -> {m.client.url}: live again "
                    f"{m.t_live - t_kill:.2f} s after the kill, first event from there "
                    f"{m.t_first - t_kill:.2f} s after it")
        print(f"faults[replicas] {m.name} ({m.kind:>4}, base {report.base:>5}): {report.counts()} "
              f"delivered={report.received}/{report.expected} snapshot_equal={report.snapshot_equal} "
              f"reconnects={stats.reconnects} gaps={stats.gaps} resets={stats.resets} "
              f"dup_dropped={stats.duplicates_dropped} at kill: {m.at_kill}{move}")
    for k, c in enumerate(commands):
        print(f"faults[replicas] commands {k + 1}: pause via {c['pause']} -> paused (seq "
              f"{c['paused_seq']}) in {c['pause_s']:.2f} s, on every client {c['seen_s']:.2f} s later; "
              f"resume via {c['resume']} -> workflow_resumed (seq {c['resumed_seq']}), emitting again "
              f"in {c['resume_s']:.2f} s")
    print(f"faults[replicas]: events={len(log)} (log at the kill {log_at_kill}, mid={mid}) "
          f"replicas started in {max(started):.1f} s, killed {replicas[victim].name}; "
          f"stream {t_done - t_kill:.1f} s after the kill, test {time.monotonic() - t_start:.1f} s "
          f"(seed={seed})")

    assert result["events"] == len(log)
    for m in members:
        report, stats = reports[m.name], m.client.stats
        assert_clean(report, f"{m.name} ({m.kind}) seed={seed}")
        assert report.received == report.expected == len(log) - report.base, m.name
        assert report.snapshot_equal, m.name
        assert stats.reconnects == (1 if m in moved else 0), (m.name, stats)
        assert stats.gaps == stats.resets == stats.duplicates_dropped == 0, (m.name, stats)
        assert m.client.protocol_errors == [], (m.name, m.client.protocol_errors)
    assert all(m.client.url == replicas[m.home].url for m in stayed)
    assert spawn.server_problems() == []
