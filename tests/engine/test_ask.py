"""Human input: ``ctx.ask`` answered by ``run.answer`` (the ``answer`` command), and the
reviewer's comment on ``ctx.approve``."""

from __future__ import annotations

import pytest

from engine import CommandRejected, Workflow
from engine_support import check_log, node_path, of_type, wait_state, wait_until, workflow_path


def asking_workflow(choices=None) -> tuple[Workflow, dict]:
    wf = Workflow("questions")
    got: dict = {}

    @wf.step()
    def plan(ctx):
        got["answer"] = ctx.ask("Which H0 prior?", choices=choices)
        return got["answer"]

    return wf, got


def test_ask_waits_on_a_human_and_returns_the_answer(store):
    wf, got = asking_workflow()
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    snap = run.snapshot()
    [pending] = snap["run"]["pending_approvals"]
    assert (pending["kind"], pending["node_id"], pending["prompt"], pending["choices"]) == (
        "question", "plan", "Which H0 prior?", None)
    assert snap["nodes"][0]["status"] == "waiting_approval"
    assert snap["run"]["counts"]["waiting_approval"] == 1
    with pytest.raises(CommandRejected, match="no approval is pending") as info:
        run.approve()  # a question is not an approval
    assert info.value.code == "no_pending_approval"

    ack = run.answer("use Planck 2018")
    assert run.wait(10) == "completed"
    assert got == {"answer": "use Planck 2018"}
    assert run.result("plan") == "use Planck 2018"
    events = check_log(run)
    [asked] = of_type(events, "question_asked")
    [answered] = of_type(events, "question_answered")
    assert asked["data"] == {"node_id": "plan", "question_id": pending["approval_id"],
                             "question": "Which H0 prior?"}
    assert answered["data"] == {"node_id": "plan", "question_id": pending["approval_id"],
                                "answer": "use Planck 2018", "command_id": ack["command_id"]}
    assert node_path(events, "plan") == ["pending", "running", "waiting_approval", "running", "completed"]
    assert workflow_path(events) == ["draft", "planning", "executing", "waiting_approval",
                                     "executing", "completed"]
    assert run.snapshot()["run"]["pending_approvals"] == []


def test_an_answer_is_applied_once_whoever_sends_it(store):
    wf, got = asking_workflow()
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    first = run.command("answer", payload={"text": "first"}, command_id="c-1")
    again = run.command("answer", payload={"text": "first"}, command_id="c-1")  # same command: same ack
    assert first["command_id"] == again["command_id"] == "c-1"
    with pytest.raises(CommandRejected, match="no question is pending") as info:
        run.answer("second")  # answered already, from wherever
    assert info.value.code == "no_pending_question"
    assert run.wait(10) == "completed"
    assert got == {"answer": "first"}
    assert len(of_type(check_log(run), "question_answered")) == 1


def test_choices_refuse_other_answers(store):
    wf, got = asking_workflow(choices=("Planck", "SH0ES"))
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    assert run.snapshot()["run"]["pending_approvals"][0]["choices"] == ["Planck", "SH0ES"]
    before = run.events().dicts()
    with pytest.raises(CommandRejected, match="must be one of 'Planck', 'SH0ES'"):
        run.answer("whatever")
    ack = store.submit_command(run.id, "answer", None, {}, "no-text")
    assert (ack["ok"], ack["code"]) == (False, "illegal_command")
    assert run.events().dicts() == before  # refused commands change nothing
    run.answer("SH0ES")
    assert run.wait(10) == "completed"
    assert got == {"answer": "SH0ES"}


def test_two_questions_need_the_node_named(store):
    wf = Workflow("two questions")
    got: dict = {}
    for name in ("a", "b"):
        def fn(ctx, name=name):
            got[name] = ctx.ask(f"{name}?")
        wf.step(name)(fn)
    run = wf.start(store=store)
    wait_until(lambda: len(run.snapshot()["run"]["pending_approvals"]) == 2, 10, "two questions")
    with pytest.raises(CommandRejected, match="2 questions are pending") as info:
        run.answer("x")
    assert info.value.code == "ambiguous_question"
    run.answer("for b", node_id="b")
    run.answer("for a", node_id="a")
    assert run.wait(10) == "completed"
    assert got == {"a": "for a", "b": "for b"}


def test_cancel_while_a_question_is_open(store):
    wf, got = asking_workflow()
    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    run.cancel()
    assert run.wait(10) == "cancelled"
    assert got == {} and run.snapshot()["run"]["pending_approvals"] == []


def test_approve_returns_the_reviewers_comment(store):
    wf = Workflow("comments")
    got: list = []

    @wf.step()
    def review(ctx):
        got.append(ctx.approve("Use this plan?"))
        got.append(ctx.approve("And this one?"))

    run = wf.start(store=store)
    wait_state(run, "waiting_approval")
    run.approve(comment="looks right")
    wait_until(lambda: len(got) == 1 and run.state == "waiting_approval", 10, "the second approval")
    run.reject()
    assert run.wait(10) == "completed"
    ok, no = got
    assert ok and ok == True and ok.comment == "looks right"  # noqa: E712 (a bool, as before)
    assert not no and no == False and no.comment is None  # noqa: E712
    assert repr(ok) == "Approval(approved=True, comment='looks right')"


def test_ask_checks_its_text_in_the_step(store):
    wf = Workflow("bad question")
    errors: list = []

    @wf.step()
    def bad(ctx):
        for question, choices in [("nul\x00", None), ("ok?", []), ("ok?", ["a\x00"])]:
            try:
                ctx.ask(question, choices)
            except ValueError as exc:
                errors.append(str(exc))

    assert wf.run(store=store).state == "completed"
    assert errors == ["ctx.ask: the question contains a NUL character",
                      "ctx.ask: choices, when given, must not be empty",
                      "ctx.ask: the choice contains a NUL character"]
