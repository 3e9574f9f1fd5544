"""``cmbagent-jupyter``: runs and live run views in the terminal.

    cmbagent-jupyter runs [--url URL --token T | --store [DB_URL]]
    cmbagent-jupyter runs rm RUN_ID... [--store DB_URL]
    cmbagent-jupyter watch RUN_ID [--url URL --token T] [--plain] [--answer | --no-answer]

Without ``--url``, the running Jupyter servers (``jupyter server list``) are asked in
this order, and the first is used with its token: those whose root directory contains
the current directory (the deepest root first), then the others; the most recently
started first within each. Which server was asked is printed on stderr. ``runs --store``
reads the store directly, no server needed. When a server does not have a run (or has
no runs) that the default store does, the CLI says so.
``runs rm`` deletes runs from the store directly (refused for one that executes; exit 1
then).
``watch`` redraws in place when stdout is a terminal, and otherwise prints one line
per applied event. It exits when the run is completed, failed or cancelled and every
event the server had by then was applied: 0 for completed, 1 for failed or cancelled,
2 for errors (no server, bad token, unknown run), 130 on Ctrl-C, 141 when its output
is closed early (``| head``). While the run waits on a human, lines typed on standard
input answer it (``--answer``, the default when stdin is a terminal; see
``terminal_answers``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import Optional, TextIO

from .client import SETTLED_STATES, Client, Marker, RunNotFound
from .terminal_answers import TerminalAnswers, describe

#: HTTP statuses of a refused handshake that retrying will not fix.
_FATAL_HTTP = {401: "authentication failed (check --token)",
               403: "authentication failed (check --token)",
               404: "the server has no cmbagent endpoint (is the cmbagent_jupyter extension enabled?)"}


class CliError(Exception):
    """An error for the user: printed without a traceback, exit code 2."""


# -- formatting ------------------------------------------------------------------------------


def _parse_ts(ts: Optional[str]) -> Optional[datetime]:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_elapsed(run: dict, now: Optional[datetime] = None) -> Optional[float]:
    """Seconds from start to finish (or to now while the run is not finished)."""
    start = _parse_ts(run.get("started_at"))
    if start is None:
        return None
    end = _parse_ts(run.get("finished_at")) or now or datetime.now(timezone.utc)
    return (end - start).total_seconds()


def fmt_started(ts: Optional[str]) -> str:
    dt = _parse_ts(ts)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def fmt_cost(usd: Optional[float]) -> str:
    return f"${usd or 0.0:.4f}"


def runs_table(runs: list[dict], now: Optional[datetime] = None) -> str:
    """The ``runs`` table: id, name, state, done/total, started, duration, cost."""
    if not runs:
        return "no runs"
    header = ("ID", "NAME", "STATE", "DONE", "STARTED", "DURATION", "COST")
    rows = [(r["id"], r.get("name", ""), r.get("state", ""), f"{r.get('done', 0)}/{r.get('total', 0)}",
             fmt_started(r.get("started_at")), fmt_duration(run_elapsed(r, now)), fmt_cost(r.get("cost_usd")))
            for r in runs]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 5, 6}

    def line(row):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def bar(fraction: float, width: int) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _summary(data: dict, limit: int = 160) -> str:
    parts = []
    if "node_id" in data:
        parts.append(str(data["node_id"]))
    for key, value in data.items():
        if key in ("node_id", "run") or value is None:
            continue
        if key in ("nodes", "edges", "added_nodes", "added_edges") and isinstance(value, list):
            parts.append(f"{key}={len(value)}")
            continue
        text = value if isinstance(value, str) else repr(value)
        parts.append(f"{key}={text}")
    out = " ".join(parts).replace("\n", " ")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def format_event(ev: dict) -> str:
    """One line for one applied event (the non-terminal ``watch`` output)."""
    ts = ev.get("timestamp", "")
    return f"{ev['seq']:6d} {ts[11:23]:12s} {ev['event_type']:24s} {_summary(ev.get('data') or {})}"


_STATUS_ORDER = ("waiting_approval", "failed", "running", "retrying", "paused")


def render(view, messages, connection: str, width: int = 100, height: int = 40,
           now: Optional[datetime] = None) -> list[str]:
    """The ``watch`` screen for a run state (an engine RunState): header, bar, nodes, messages."""
    width = max(width, 40)
    run = view.run
    lines = [
        f"{run.get('name', '')} [{run['state']}]  connection: {connection}",
        f"elapsed {fmt_duration(run_elapsed(run, now))}  cost {fmt_cost(run.get('cost_usd'))}  "
        f"tokens {run.get('input_tokens', 0)} in / {run.get('output_tokens', 0)} out",
    ]
    total, done = run.get("total", 0), run.get("done", 0)
    counts = ", ".join(f"{k} {v}" for k, v in (run.get("counts") or {}).items() if v)
    lines.append(f"{bar(done / total if total else 0.0, 30)} {done}/{total} done   {counts}")
    if run.get("reason"):
        lines.append(f"reason: {run['reason']}")
    if run.get("last_error"):
        lines.append(f"last error: {run['last_error'].get('code')}: {run['last_error'].get('message')}")
    for a in run.get("pending_approvals") or []:
        lines.append(describe(a))
    msg_lines = [f"  {m['agent']}: {m['message']}" for m in messages]
    tail = (["messages:"] + msg_lines) if msg_lines else []
    room = max(1, height - 1 - len(lines) - len(tail))
    nodes = sorted(view.nodes.values(), key=lambda n: n["position"])
    if len(nodes) > room:  # the interesting ones first, the rest summarized
        rank = {s: i for i, s in enumerate(_STATUS_ORDER)}
        keep = sorted(nodes, key=lambda n: (rank.get(n["status"], len(rank)), n["position"]))[: room - 1]
        keep_ids = {n["id"] for n in keep}
        shown = [n for n in nodes if n["id"] in keep_ids]
        hidden = len(nodes) - len(shown)
    else:
        shown, hidden = nodes, 0
    label_w = min(30, max((len(n["label"]) for n in shown), default=4))
    for n in shown:
        line = f"  {n['label'][:label_w]:{label_w}s} {n['status']:16s}"
        if n["status"] in ("running", "paused", "waiting_approval", "retrying") and n.get("progress") is not None:
            line += f" {bar(n['progress'], 10)} {n['progress'] * 100:3.0f}%"
        if n.get("progress_message") and n["status"] != "completed":
            line += f" {n['progress_message']}"
        if n["status"] == "failed" and n.get("error"):
            line += f" {n['error'].get('type', '')}: {n['error'].get('message', '')}"
        if n.get("attempt", 0) > 1:
            line += f" (attempt {n['attempt']})"
        lines.append(line)
    if hidden:
        lines.append(f"  ... and {hidden} more nodes")
    lines.extend(tail)
    lines = [ln.rstrip() for ln in lines]
    return [ln if len(ln) < width else ln[: width - 4] + "..." for ln in lines]


class Screen:
    """Redraws a block of lines in place (ANSI: cursor up, clear to end of screen)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        buf = []
        if self.drawn:
            buf.append(f"\x1b[{self.drawn}A\r")
        buf.append("\x1b[J")
        buf.extend(line + "\n" for line in lines)
        self.out.write("".join(buf))
        self.out.flush()
        self.drawn = len(lines)


# -- server discovery --------------------------------------------------------------------


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return isinstance(pid, int)
    return True


def running_servers() -> list[dict]:
    """Info of the running Jupyter servers, most recently started first (each with its
    ``started`` mtime added).

    The same ``jpserver-*.json`` files of the Jupyter runtime dir that
    ``jupyter_server.serverapp.list_running_servers()`` reads, read without importing
    ``jupyter_server.serverapp`` (that import alone takes seconds) and without deleting
    stale files.
    """
    import glob
    import json

    from jupyter_core.paths import jupyter_runtime_dir

    found = []
    for path in glob.glob(os.path.join(jupyter_runtime_dir(), "jpserver-*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            mtime = os.path.getmtime(path)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("url") and _pid_alive(info.get("pid")):
            found.append({**info, "started": mtime})
    return sorted(found, key=lambda info: (-info["started"], info["url"]))


def _root_depth(info: dict, cwd: str) -> int:
    """How deep the server's root directory is if it contains ``cwd``, else -1."""
    root = info.get("root_dir") or info.get("notebook_dir")
    if not root:
        return -1
    root = os.path.realpath(os.path.expanduser(root))
    try:
        inside = os.path.commonpath([root, cwd]) == root
    except ValueError:  # different drives
        return -1
    return root.count(os.sep) if inside else -1


def choose_servers(servers: list[dict], cwd: str) -> list[dict]:
    """``servers`` in the order they are tried: roots containing ``cwd`` first, the
    deepest first; then the rest; the newest first among equals (a stable order)."""
    cwd = os.path.realpath(cwd)
    return sorted(servers, key=lambda info: (-_root_depth(info, cwd), -info["started"], info["url"]))


def resolve_server(url: Optional[str], token: Optional[str], err: TextIO) -> tuple[str, Optional[str]]:
    """``--url``/``--token``, or the chosen running Jupyter server and its token; says
    on ``err`` which server is asked."""
    if url:
        print(f"cmbagent-jupyter: asking {url}", file=err, flush=True)
        return url, token if token is not None else os.environ.get("JUPYTER_TOKEN") or None
    servers = choose_servers(running_servers(), os.getcwd())
    if not servers:
        raise CliError("no running Jupyter server found (`jupyter server list` is empty); "
                       "start one, or pass --url and --token")
    info = servers[0]
    root = info.get("root_dir") or info.get("notebook_dir") or "?"
    others = f"; {len(servers) - 1} other server(s) running, choose one with --url" if len(servers) > 1 else ""
    print(f"cmbagent-jupyter: asking the Jupyter server at {info['url']} (root {root}){others}",
          file=err, flush=True)
    return info["url"], token if token is not None else (info.get("token") or None)


def store_note(run_id: Optional[str] = None) -> str:
    """What the default store has that the server did not show: the run ``run_id``, or
    any runs; "" when it has neither (or cannot be read)."""
    from engine import StoreError, UnknownRun
    from engine.store import open_existing_store

    try:
        store = open_existing_store()
        if store is None:
            return ""
        if run_id is None:
            count = len(store.runs())
            return (f"; the store at {store.url} has {count} run(s): that server uses another store "
                    "or serves another user (`cmbagent-jupyter runs --store` lists them)") if count else ""
        store.run_doc(run_id)
    except (UnknownRun, StoreError, OSError):  # unknown there too, or unreadable: nothing to add
        return ""
    return (f"; run {run_id} is in the store at {store.url}, so that server uses another store "
            "or serves another user: choose a server with --url")


async def _wait_connected(client: Client, ready, timeout: Optional[float]) -> None:
    """Wait for ``ready()``; a refused handshake (bad token, no extension) is an error."""

    def done():
        return ready() or client.last_http_status in _FATAL_HTTP

    try:
        await client.wait_for(done, timeout)
    except asyncio.TimeoutError:
        raise CliError(f"could not reach {client.base_url} within {timeout:g} s"
                       f" ({client.last_error or 'no answer'})") from None
    if not ready() and client.last_http_status in _FATAL_HTTP:
        raise CliError(f"{client.base_url}: {_FATAL_HTTP[client.last_http_status]}")


# -- commands --------------------------------------------------------------------------------


async def cmd_runs(args, out: TextIO, err: TextIO) -> int:
    if args.store is not None:
        import engine

        # Not closed: open_store's object is shared in this process (a server or
        # executors may use it too), and the process ends soon anyway.
        runs = engine.open_store(args.store or None).runs()
    else:
        url, token = resolve_server(args.url, args.token, err)
        client = Client(url, token)
        try:
            client.subscribe_runs()
            await _wait_connected(client, lambda: client.runs_loaded, args.timeout)
            runs = list(client.runs().values())
        finally:
            await client.close()
        if not runs:
            note = store_note()
            if note:
                print(f"cmbagent-jupyter: no runs on {url}{note}", file=err, flush=True)
    print(runs_table(runs), file=out)
    return 0


def cmd_runs_rm(args, out: TextIO, err: TextIO) -> int:
    """Delete runs from the store (their events, results and commands); servers' run
    lists hear it. A run that executes is refused (cancel it first)."""
    import engine
    from engine.errors import RunBusy, UnknownRun

    store = engine.open_store(args.store or None)
    failed = 0
    for run_id in args.run_ids:
        try:
            store.delete_run(run_id)
            print(f"deleted {run_id}", file=out)
        except (RunBusy, UnknownRun) as exc:
            failed += 1
            print(f"cmbagent-jupyter: {exc}", file=err)
    return 1 if failed else 0


async def cmd_watch(args, out: TextIO, err: TextIO, inp: Optional[TextIO] = None) -> int:
    url, token = resolve_server(args.url, args.token, err)
    tty = out.isatty() and not args.plain
    inp = inp or sys.stdin
    answering = args.answer if args.answer is not None else inp.isatty()
    answers = TerminalAnswers(inp, asyncio.get_running_loop()) if answering else None
    asked: set[str] = set()  # the requests whose answer was asked for (plain output)
    client = Client(url, token)
    stream = client.events(args.run_id, markers=True)
    messages: deque = deque(maxlen=args.messages)
    screen = Screen(out) if tty else None
    shown_conn = None
    target: Optional[int] = None  # the server's last seq once the run looked settled
    last_draw = 0.0
    try:
        await _wait_connected(client, lambda: client.connection_state == "live", args.timeout)
        if tty:
            out.write("\x1b[?25l")  # hide the cursor while redrawing
        while True:
            item = None
            try:
                item = await stream.next(timeout=0.25 if tty else 1.0)
            except asyncio.TimeoutError:
                pass
            except RunNotFound as exc:
                raise CliError(f"{url}: {exc}{store_note(args.run_id)}") from None
            except StopAsyncIteration:
                return 1
            if isinstance(item, Marker):
                if item.kind == "snapshot" and item.snapshot is not None:
                    seeded = [n["last_message"] for n in item.snapshot["nodes"] if n.get("last_message")]
                    messages.clear()
                    messages.extend(sorted(seeded, key=lambda m: m["timestamp"])[-args.messages:])
                if not tty:
                    what = (f"snapshot at seq {item.seq}" if item.kind == "snapshot"
                            else f"reset ({item.reason}) after seq {item.seq}")
                    print(f"# {what}", file=out, flush=True)
            elif item is not None:
                if item["event_type"] == "agent_message":
                    d = item["data"]
                    messages.append({"agent": d["agent"], "message": d["message"],
                                     "timestamp": item["timestamp"]})
                if not tty:
                    print(format_event(item), file=out, flush=True)
            conn = client.connection_state
            if not tty and conn != shown_conn:
                if shown_conn is not None:
                    extra = f" ({client.last_error})" if conn != "live" and client.last_error else ""
                    print(f"# connection: {conn}{extra}", file=err, flush=True)
                shown_conn = conn

            view = client.state(args.run_id)
            pending = view.run["pending_approvals"] if view is not None else []
            if answers is not None and not tty:  # how to answer, once per request
                for a in pending:
                    if a["approval_id"] not in asked:
                        asked.add(a["approval_id"])
                        print(f"# {describe(a)}", file=out, flush=True)
            typed = answers.line() if answers is not None else None
            if typed is not None and typed.strip():
                said = await answers.send(client, args.run_id, pending, typed)
                print(f"# {said}", file=err, flush=True)
            follower = client.follower(args.run_id)
            settled = (view is not None and view.run["state"] in SETTLED_STATES
                       and stream.pending() == 0 and follower is not None and follower.synced)
            if not settled:
                target = None
            elif target is None and conn == "live":
                try:
                    target = await client.server_last_seq(args.run_id)
                except RunNotFound as exc:
                    raise CliError(f"{url}: {exc}{store_note(args.run_id)}") from None
                except Exception:  # the server is away; ask again once reconnected
                    target = None
            finished = settled and target is not None and follower.last >= target
            if tty and view is not None:
                now = time.monotonic()
                if finished or item is None or now - last_draw >= 0.1:
                    size = shutil.get_terminal_size((100, 40))
                    screen.draw(render(view, messages, client.describe_connection(),
                                       size.columns, size.lines))
                    last_draw = now
            if finished:
                state = view.run["state"]
                if not tty:
                    print(f"# run {args.run_id} {state} at seq {follower.last}", file=out, flush=True)
                return 0 if state == "completed" else 1
    finally:
        if tty:
            out.write("\x1b[?25h")
            out.flush()
        stream.close()
        await client.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmbagent-jupyter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def server_args(p):
        p.add_argument("--url", help="server base URL (default: the running Jupyter server whose root "
                       "contains the current directory, else the newest)")
        p.add_argument("--token", help="server token (default: the running server's, or $JUPYTER_TOKEN)")
        p.add_argument("--timeout", type=float, default=15.0,
                       help="seconds to wait for the first connection (default 15)")

    p_runs = sub.add_parser("runs", help="list runs")
    server_args(p_runs)
    p_runs.add_argument("--store", nargs="?", const="", default=None, metavar="DB_URL",
                        help="read the store directly, no server (default store if no URL)")
    runs_sub = p_runs.add_subparsers(dest="runs_command")
    p_rm = runs_sub.add_parser("rm", help="delete runs: their events, results and commands")
    p_rm.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p_rm.add_argument("--store", default=argparse.SUPPRESS, metavar="DB_URL",
                      help="the store to delete from (default: the default store)")
    p_watch = sub.add_parser("watch", help="follow a run live until it finishes")
    p_watch.add_argument("run_id")
    server_args(p_watch)
    p_watch.add_argument("--plain", action="store_true",
                         help="one line per event even on a terminal")
    p_watch.add_argument("--messages", type=int, default=5, help="agent messages to show (default 5)")
    p_watch.add_argument("--answer", action=argparse.BooleanOptionalAction, default=None,
                         help="answer questions and approvals with lines typed on stdin "
                              "(default: when stdin is a terminal)")
    return parser


async def amain(argv: Optional[list[str]] = None, out: Optional[TextIO] = None,
                err: Optional[TextIO] = None, inp: Optional[TextIO] = None) -> int:
    """The CLI, on the running event loop (tests call this in-process)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "runs" and args.runs_command == "rm":
            return cmd_runs_rm(args, out, err)
        if args.command == "runs":
            if args.store is not None and (args.url or args.token):
                raise CliError("--store reads the store directly; it does not take --url/--token")
            return await cmd_runs(args, out, err)
        return await cmd_watch(args, out, err, inp)
    except CliError as exc:
        print(f"cmbagent-jupyter: error: {exc}", file=err, flush=True)
        return 2


def main(argv: Optional[list[str]] = None) -> int:
    try:
        code = asyncio.run(amain(argv))
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as a pipeline expects. Python
        # would flush stdout again at exit and complain: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
