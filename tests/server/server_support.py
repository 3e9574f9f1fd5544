"""Helpers for the server tests: workflows to watch and steer, a snapshot of everything
a store holds, and the schema check every test socket applies to what it receives.
(Waiting on conditions without blocking the event loop: ``support.wait_until_async``.)"""

from __future__ import annotations

import json
import threading
import time
from typing import Optional

from jsonschema import Draft202012Validator, validators

from engine import Workflow
from engine.runtime import close_executors
from support import finished_run, raw_rows, wait_until  # noqa: F401  (finished_run re-exported)

#: Events the tests open at teardown, so no step thread outlives its test.
RELEASES: list[threading.Event] = []


def node_status(store, run_id: str, node_id: str) -> str:
    return next(n["status"] for n in store.snapshot(run_id)["nodes"] if n["id"] == node_id)


def gated_run(store, progress: int = 20, name: str = "gated", owner: Optional[str] = None):
    """A run whose first step, once started, waits for ``gate`` and then reports progress.

    The caller waits (``await wait_until_async(...)``) for the step's start to be committed."""
    gate = threading.Event()
    RELEASES.append(gate)
    wf = Workflow(name)

    @wf.step()
    def a(ctx):
        assert gate.wait(30), "gate never opened"
        for i in range(progress):
            ctx.progress((i + 1) / progress, f"{i + 1} of {progress}")
        ctx.message("done", agent="tester")
        return 1

    @wf.step(deps=["a"])
    def b(a):
        return a + 1

    return wf.start(store=store, owner=owner), gate


def steerable_run(store, name: str = "steerable", owner: Optional[str] = None):
    """A run whose step sits at checkpoints (so it can be paused, resumed, cancelled) until
    ``release`` is set."""
    release = threading.Event()
    RELEASES.append(release)
    wf = Workflow(name)

    @wf.step()
    def work(ctx):
        while not release.is_set():
            ctx.checkpoint()
            time.sleep(0.002)
        return 1

    return wf.start(store=store, owner=owner), release


def cancelled_run(store):
    run, release = steerable_run(store, name="cancelled")
    wait_until(lambda: node_status(store, run.id, "work") == "running", 10, "the step to start")
    run.cancel()
    assert run.wait(10) == "cancelled"
    return run


def store_contents(store) -> dict:
    """Everything the store holds that a client could change: table sizes, the log,
    the commands and every run's snapshot (read with the backend's own driver)."""
    counts = {t: raw_rows(store, f"SELECT COUNT(*) FROM {t}")[0][0]
              for t in ("runs", "nodes", "edges", "events", "commands", "approvals")}
    log = raw_rows(store, "SELECT run_id, seq, id FROM events ORDER BY run_id, seq")
    commands = raw_rows(store, "SELECT command_id, status FROM commands ORDER BY n")
    return {"counts": counts, "log": log, "commands": commands, "runs": store.runs(),
            "snapshots": {r["id"]: store.snapshot(r["id"]) for r in store.runs()}}


def shutdown_executors(store) -> None:
    for ev in RELEASES:
        ev.set()
    RELEASES.clear()
    close_executors(store)


def _discriminated_one_of(validator, one_of, instance, schema):
    """``oneOf`` that goes straight to the alternative a pydantic ``discriminator`` names.

    Only used on unions whose alternatives each pin the discriminator to a distinct
    constant (FrameValidator checks that): an instance valid under the named
    alternative is valid under no other, so the verdict is the plain ``oneOf``'s."""
    disc = schema.get("discriminator")
    if disc and validator.is_type(instance, "object"):
        ref = disc["mapping"].get(instance.get(disc["propertyName"])) if isinstance(
            instance.get(disc["propertyName"]), str) else None
        if ref is not None:
            yield from validator.descend(instance, {"$ref": ref})
            return
    yield from _PLAIN_ONE_OF(validator, one_of, instance, schema)


_PLAIN_ONE_OF = Draft202012Validator.VALIDATORS["oneOf"]
_FastValidator = validators.extend(Draft202012Validator, {"oneOf": _discriminated_one_of})


class FrameValidator:
    """Validates server frames against the schema's ``ServerMessage`` definition.

    ``whole`` is the plain Draft 2020-12 validator. ``iter_errors`` gives the same
    verdict faster: the schema's discriminated unions (the frame types, the 25 event
    types) are checked against the one alternative the discriminator names instead of
    all of them (plain ``oneOf`` on every event of every frame costs seconds per test)."""

    _cache: dict = {}

    def __new__(cls, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        if key not in cls._cache:  # building one costs ~0.5 s; every test's server has the same
            cls._cache[key] = super().__new__(cls)
            cls._cache[key]._build(schema)
        return cls._cache[key]

    def _build(self, schema: dict) -> None:
        Draft202012Validator.check_schema(schema)
        defs = schema["$defs"]
        root = {"$schema": schema["$schema"], "$defs": defs, "$ref": "#/$defs/ServerMessage"}
        self._check_discriminators(schema, defs)
        self.whole = Draft202012Validator(root)
        self.fast = _FastValidator(root)

    @staticmethod
    def _check_discriminators(node, defs) -> None:
        if isinstance(node, dict):
            if "discriminator" in node and "oneOf" in node:
                prop, mapping = node["discriminator"]["propertyName"], node["discriminator"]["mapping"]
                refs = [alt["$ref"] for alt in node["oneOf"]]
                assert sorted(mapping.values()) == sorted(refs), "discriminator mapping != oneOf"
                for const, ref in mapping.items():
                    alt = defs[ref.rsplit("/", 1)[1]]
                    assert alt["properties"][prop].get("const") == const, (ref, prop)
                    assert prop in alt.get("required", []), (ref, prop)
            for v in node.values():
                FrameValidator._check_discriminators(v, defs)
        elif isinstance(node, list):
            for v in node:
                FrameValidator._check_discriminators(v, defs)

    def iter_errors(self, frame):
        return self.fast.iter_errors(frame)
