"""Fault 7: a client that asks and never reads. 300 ``request_state`` frames for a
2,000-node run from a socket that reads nothing: the server's memory grows by no more
than the client's buffer cap (``client_buffer_bytes``, 2 MiB here) and a small margin,
it goes on serving everyone else, and when the client reads at last it gets the run's
state a handful of times, not 300.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import psutil

from engine import Workflow

CAP = 2 * 2**20
#: What the server may grow by besides the cap: one snapshot in the making and the
#: allocator's slack.
MARGIN = 24 * 2**20
NODES = 2000
REQUESTS = 300


class RawSocket:
    """A WebSocket client that only does what it is told: it sends (masked) text frames
    and reads nothing until ``drain`` (its receive buffer is tiny), so what the server
    sends piles up on the server."""

    def __init__(self, port: int, token: str):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /cmbagent/api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = b""

    def send(self, obj: dict) -> None:
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def frames(self, timeout: float):
        """Read server frames until nothing comes for ``timeout`` s: [(opcode, payload)]."""
        self.sock.settimeout(timeout)
        out = []
        while True:
            while True:
                frame = self._parse()
                if frame is None:
                    break
                out.append(frame)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                return out
            if not chunk:
                return out
            self.buf += chunk

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        n, i = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, i = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, i = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < i + n:
            return None
        self.buf = b[i + n:]
        return b[0] & 0x0F, b[i:i + n]

    def close(self) -> None:
        self.sock.close()


def wide_run(store):
    wf = Workflow("wide", description="2,000 independent steps")
    for i in range(NODES):
        wf.step(f"step_{i:04d}")(lambda ctx: None)
    run = wf.run(store=store, timeout=300)
    assert run.state == "completed"
    return run


async def settled(proc: psutil.Process, quiet: float = 1.0, timeout: float = 90.0) -> None:
    """Wait until the process has been idle (under 20 % of a core: its store polling
    alone takes ~6 %) for ``quiet`` seconds."""
    t0 = time.monotonic()
    while True:
        before = sum(proc.cpu_times()[:2])
        await asyncio.sleep(quiet)
        if sum(proc.cpu_times()[:2]) - before < 0.2 * quiet:
            return
        assert time.monotonic() - t0 < timeout, "the server never went idle"


async def test_a_client_that_never_reads_costs_the_server_its_cap_not_more(spawn, open_db):
    server = spawn.server(args=[f"--CmbAgentApp.client_buffer_bytes={CAP}"])
    await server.wait_ready()
    store = open_db()
    run = await asyncio.get_running_loop().run_in_executor(None, wide_run, store)
    size = len(json.dumps({"type": "snapshot", **store.snapshot(run.id)}))
    proc = psutil.Process(server.proc.pid)

    # warm up: a client that reads gets the state a few times (the allocator's arenas
    # grow to what one snapshot takes)
    reader = RawSocket(server.port, server.token)
    for _ in range(3):
        reader.send({"type": "request_state", "run_id": run.id})
    got = reader.frames(5.0)
    assert sum(1 for op, p in got if b'"type":"snapshot"' in p[:30]) == 3
    await settled(proc)
    before = proc.memory_info().rss

    attacker = RawSocket(server.port, server.token)
    for _ in range(REQUESTS):
        attacker.send({"type": "request_state", "run_id": run.id})
    await settled(proc)
    after = proc.memory_info().rss
    # everyone else is still served
    reader.send({"type": "ping", "id": "still-there"})
    assert any(b"still-there" in p for _, p in reader.frames(5.0))
    # the client reads at last: a handful of snapshots (those within its cap, then the one
    # it was owed), not 300
    frames = attacker.frames(5.0)
    snapshots = sum(1 for _, p in frames if p.startswith(b'{"type":"snapshot"'))
    reader.close()
    attacker.close()
    print(f"faults[slow reader]: {REQUESTS} request_state for a {NODES}-node run "
          f"(snapshot {size / 2**20:.2f} MiB), cap {CAP / 2**20:g} MiB: server RSS "
          f"{before / 2**20:.0f} -> {after / 2**20:.0f} MiB (+{(after - before) / 2**20:.1f} MiB); "
          f"the client got {snapshots} snapshots")
    assert after - before < CAP + MARGIN
    # those that fit the cap or went into the kernel's socket buffers (a few MiB on
    # loopback), and the one it was owed
    assert 1 <= snapshots <= 12
    assert spawn.server_problems() == []
