"""The client and the CLI against a real Jupyter server (pytest-jupyter) serving a real store."""

import asyncio
import io
import os
import sys
import threading

import pytest

from cmbagent_jupyter import cli
from cmbagent_jupyter.client import Client, Marker, RunNotFound
from client_support import gated_wf, small_wf

FAST = {"first_backoff": 0.05, "validate": True}


async def test_follow_run_to_completion_across_a_drop(store, server_url):
    url, token = server_url
    gate = threading.Event()
    try:
        run = gated_wf(gate).start(store=store)
        async with Client(url, token, **FAST) as client:
            stream = client.events(run.id, markers=True)
            await client.wait_for(lambda: client.state(run.id) is not None
                                  and client.state(run.id).nodes["a"]["progress"] == 0.5, 10)
            # drop the connection mid-run; the client resubscribes from its cursor
            before = client.last_seq(run.id)
            client._conn.close()
            await client.wait_for(lambda: client.stats.reconnects == 1
                                  and client.connection_state == "live", 10)
            gate.set()
            # answer the approval through the socket
            await client.wait_for(lambda: client.state(run.id).run["pending_approvals"], 10)
            ack = await client.command(run.id, "approve", payload={"comment": "ok"})
            assert ack["ok"] is True and ack["command_id"]
            again = await client.command(run.id, "approve", command_id=ack["command_id"])
            assert again == ack  # the same command id: the same ack, applied once
            await client.wait_for(lambda: client.state(run.id).run["state"] == "completed", 20)
            view = await client.wait_caught_up(run.id, 10)
            assert view.snapshot() == run.snapshot()
            assert client.last_seq(run.id) == len(run.events())

            items = []
            while stream.pending():
                items.append(await stream.next(0))
            first = items[0]
            assert isinstance(first, Marker) and first.kind == "snapshot"
            markers = [(i.kind, i.seq, i.reason) for i in items if isinstance(i, Marker)]
            assert markers == [("snapshot", first.seq, None)], (markers, client.stats)
            seqs = [i["seq"] for i in items[1:]]
            assert all(isinstance(i, dict) for i in items[1:])  # no reset, no second snapshot
            assert seqs == list(range(first.seq + 1, len(run.events()) + 1))  # each once, in order
            assert before < seqs[-1]
            assert client.stats.gaps == 0 and client.stats.resets == 0
            assert client.stats.events_applied == len(seqs)
            assert client.protocol_errors == [] and client.invalid_frames == []
    finally:
        gate.set()


async def test_run_list_and_heartbeat(store, server_url):
    url, token = server_url
    async with Client(url, token, **FAST) as client:
        client.subscribe_runs()
        await client.wait_for(lambda: client.runs_loaded, 10)
        assert client.runs() == {}
        assert client.heartbeat_interval == 0.2  # from the server's hello
        run = small_wf().start(store=store)
        await client.wait_for(lambda: client.runs().get(run.id, {}).get("state") == "completed", 20)
        assert client.runs()[run.id]["done"] == 3
        # pings are answered: several round trips on one connection
        await client.wait_for(lambda: client._ping_id >= 3, 10)
        assert client.stats.reconnects == 0 and len(client._unanswered) <= 1


async def test_unknown_run_and_bad_token(server_url):
    url, token = server_url
    async with Client(url, token, **FAST) as client:
        with pytest.raises(RunNotFound):
            await client.wait_synced("no-such-run", 10)
        ack = await client.command("no-such-run", "pause")
        assert ack["ok"] is False and ack["code"] == "unknown_run"
    async with Client(url, "wrong-token", **FAST) as client:
        await client.wait_for(lambda: client.last_http_status == 403, 10)
        assert client.connection_state in ("reconnecting", "connecting")


async def test_cli_runs_and_watch_in_process(store, db_url, server_url):
    url, token = server_url
    ok = small_wf("cli-ok").run(store=store, timeout=30)
    bad = small_wf("cli-bad", fail=True).run(store=store, timeout=30)
    out, err = io.StringIO(), io.StringIO()
    assert await cli.amain(["runs", "--url", url, "--token", token], out, err) == 0, err.getvalue()
    table = out.getvalue().splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "DONE", "STARTED", "DURATION", "COST"]
    assert table[1].split()[:4] == [bad.id, "cli-bad", "failed", "2/3"]
    assert table[2].split()[:4] == [ok.id, "cli-ok", "completed", "3/3"]
    assert table[2].split()[-1] == "$0.0010"

    out = io.StringIO()
    assert await cli.amain(["runs", "--store", db_url], out, err) == 0
    assert [line.split()[0] for line in out.getvalue().splitlines()[1:]] == [bad.id, ok.id]

    out = io.StringIO()
    assert await cli.amain(["watch", bad.id, "--url", url, "--token", token], out, err) == 1
    evs = bad.events()
    assert out.getvalue().splitlines()[-1] == f"# run {bad.id} failed at seq {len(evs)}", [
        (e.seq, e.event_type, e.data.model_dump(mode="json", exclude={"error"})) for e in evs[-4:]]

    err = io.StringIO()
    assert await cli.amain(["watch", "nope", "--url", url, "--token", token], io.StringIO(), err) == 2
    assert "unknown run 'nope'" in err.getvalue()
    err = io.StringIO()
    assert await cli.amain(["runs", "--url", url, "--token", "wrong"], io.StringIO(), err) == 2
    assert "authentication failed" in err.getvalue()


async def test_cli_watch_subprocess(store, server_url):
    url, token = server_url
    gate = threading.Event()
    try:
        run = gated_wf(gate, "cli-watch").start(store=store)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("JUPYTER_TOKEN", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cmbagent_jupyter.cli", "watch", run.id, "--url", url,
            "--token", token, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        lines = []
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), 20)
            lines.append(first.decode().rstrip("\n"))
            assert lines[0].startswith("# snapshot at seq ")
            gate.set()  # the rest happens live, while the CLI watches
            approved = False
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 20)
                if not line:
                    break
                lines.append(line.decode().rstrip("\n"))
                if "approval_requested" in lines[-1] and not approved:
                    await asyncio.get_running_loop().run_in_executor(None, run.approve)
                    approved = True
            rc = await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = (await proc.stderr.read()).decode()
        assert rc == 0, stderr
        n = len(run.events())
        assert lines[-1] == f"# run {run.id} completed at seq {n}"
        first_seq = int(lines[0].split()[-1])
        seqs = [int(line.split()[0]) for line in lines[1:-1]]
        assert seqs == list(range(first_seq + 1, n + 1))
        assert any("workflow_completed" in line for line in lines)
    finally:
        gate.set()


def test_render_and_table_formatting(store):
    run = small_wf("render", fail=True).run(store=store, timeout=30)
    from engine.snapshot import RunState

    view = RunState.replay(run.id, run.events().dicts())
    lines = cli.render(view, [{"agent": "tester", "message": "hello", "timestamp": "t"}],
                       "reconnecting in 3 s", width=80, height=40)
    assert lines[0] == "render [failed]  connection: reconnecting in 3 s"
    assert lines[1].startswith("elapsed ") and "cost $0.0010" in lines[1] and "10 in / 5 out" in lines[1]
    assert "2/3 done" in lines[2]
    assert any(line.split()[:2] == ["b", "failed"] and "RuntimeError" in line for line in lines)
    assert lines[-2:] == ["messages:", "  tester: hello"]
    assert all(len(line) < 80 for line in lines)
    small = cli.render(view, [], "live", width=80, height=5)
    assert len(small) <= 5 and small[-1].startswith("  ... and")
    assert "failed" in small[-2]  # the interesting node is kept
    assert cli.fmt_duration(5) == "5.0s" and cli.fmt_duration(125) == "2m05s"
    assert cli.fmt_duration(3725) == "1h02m"
    assert cli.runs_table([]) == "no runs"
