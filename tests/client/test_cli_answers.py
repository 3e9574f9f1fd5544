"""Answering a run's question and approval from the terminal (``cmbagent-jupyter watch``)
and over REST, against a real Jupyter server."""

import asyncio
import io
import os

from cmbagent_jupyter import cli
from cmbagent_jupyter.terminal_answers import command_for
from engine import Workflow


def asking_wf():
    wf = Workflow("cli-asks")

    @wf.step()
    def plan(ctx):
        prior = ctx.ask("Which H0 prior?")
        ok = ctx.approve(f"Fit with {prior}?")
        return f"{prior}/{bool(ok)}/{ok.comment}"

    return wf


async def test_watch_answers_a_question_and_an_approval_typed_on_stdin(store, server_url):
    url, token = server_url
    run = asking_wf().start(store=store)
    read_fd, write_fd = os.pipe()
    inp, typing = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    out, err = io.StringIO(), io.StringIO()
    watch = asyncio.ensure_future(cli.amain(
        ["watch", run.id, "--url", url, "--token", token, "--answer"], out, err, inp))

    async def shown(text):
        for _ in range(200):
            if text in out.getvalue():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} never shown:\n{out.getvalue()}\n{err.getvalue()}")

    try:
        await shown("# question on plan: Which H0 prior?  [type your answer, then Enter]")
        typing.write("Planck 2018\n")
        typing.flush()
        await shown("# approval pending on plan: Fit with Planck 2018?")
        typing.write("y fine by me\n")
        typing.flush()
        assert await asyncio.wait_for(watch, 30) == 0, err.getvalue()
    finally:
        typing.close()
        inp.close()
    assert run.result("plan") == "Planck 2018/True/fine by me"
    assert "# sent: answer on plan" in err.getvalue() and "# sent: approve on plan" in err.getvalue()


def test_typed_lines_become_commands():
    question = {"kind": "question", "node_id": "n", "prompt": "?"}
    approval = {"kind": "approval", "node_id": "n", "prompt": "?"}
    assert command_for(question, "  no thanks \n") == ("answer", {"text": "no thanks"})
    assert command_for(approval, "n too noisy") == ("reject", {"comment": "too noisy"})
    assert command_for(approval, "YES") == ("approve", {})
    assert "with y or n" in command_for(approval, "maybe")
