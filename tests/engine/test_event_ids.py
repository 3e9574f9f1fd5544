"""Every event's ``id`` is a UUID of its own and its ``timestamp`` ISO 8601 UTC with offset
(the envelope contract), however fast a step records: ids are made in batches and
timestamps formatted from a cached second (engine.events), so check what that gives."""

from __future__ import annotations

import os
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from engine import Workflow
from engine.events import new_uuid, now_iso

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def test_a_fast_step_gets_distinct_uuids_and_utc_timestamps(store):
    wf = Workflow("ids")

    @wf.step()
    def emit(ctx):
        for i in range(3000):  # many batches of ids, several seconds' worth on a slow machine
            ctx.progress(i / 3000, "working")

    before = datetime.now(timezone.utc)
    run = wf.start(store=store)
    assert run.wait(60) == "completed"
    after = datetime.now(timezone.utc)

    events = run.events().dicts()
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) > 3000
    for i in ids:
        u = uuid.UUID(i)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, i)
    for e in events:
        assert ISO_UTC.fullmatch(e["timestamp"]), e["timestamp"]
        ts = datetime.fromisoformat(e["timestamp"])
        assert before - timedelta(seconds=1) <= ts <= after + timedelta(seconds=1)


def test_now_iso_is_what_datetime_writes():
    a = datetime.now(timezone.utc)
    text = now_iso()
    b = datetime.now(timezone.utc)
    assert ISO_UTC.fullmatch(text)
    assert a - timedelta(milliseconds=1) <= datetime.fromisoformat(text) <= b + timedelta(milliseconds=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_makes_ids_of_its_own():
    new_uuid()  # the parent holds a batch of ids not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out without running the parent's cleanup
        try:
            os.write(write, "\n".join(new_uuid() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_uuid() for _ in range(100)}
    assert len(child) == 100 and not child & parent
