"""Running step bodies on a Dask ``distributed`` cluster: ``wf.start(store, dask=...)``.

``dask`` is a ``distributed.Client`` (e.g. on a ``LocalCluster``) or a scheduler
address. Only the step *bodies* go to the cluster: the executor (state machine, lease,
the one writer of the run's log) stays in the process that started the run, exactly as
for local steps, and ``DaskRunner`` is the seam between the two (the executor's other
runner is its thread pool, ``engine.executor.ThreadRunner``). Each attempt of a step is
one Dask task, ``run_attempt``, which calls the step with a ``StepContext`` whose calls
travel back to the executor; workers need this package installed (``engine``).

How worker-side ``ctx`` calls reach the log
-------------------------------------------
The task sends each call as a structured-log event, ``Worker.log_event(topic, msg)``, on
the topic of the executor's Client (``cmbagent-steps-<client id>``), to which that Client
subscribes (``Client.subscribe_topic``); ``msg`` is ``[run_id, attempt token, index,
kind, body]``. Why this channel rather than Pub/Sub, Queues or Variables:

* *Ordered.* A task runs on one worker, a worker's messages to the scheduler travel on
  its one batched stream, and the scheduler forwards each event on the Client's stream
  as it arrives: a step's events arrive in the order the step made them, and before
  the report that the task ended (which follows the same two streams).
* *Cheap and non-blocking for the step.* ``log_event`` only queues a message on the
  worker's stream (about 10 µs); events are batched on the way. A Queue or a Variable
  costs a scheduler round trip per event.
* *Nothing to run besides Dask.* The scheduler is the broker. (``distributed``'s
  Pub/Sub, best effort and peer to peer, is not in current releases.)
* *Recoverable.* The scheduler keeps the latest events of every topic
  (``Client.get_events``), so a message missing from the stream can be fetched again.
  One topic per Client, not per run: the scheduler never forgets a topic, so per-run
  topics would grow its memory with every run.

Exactness does not rest on the transport alone: the executor records an attempt's
messages strictly by index, drops those of an attempt that has ended, and records the
attempt's end (completion, failure) only after recording every message before it: the
last message, ``end``, says how the step ended. When the task has finished but messages
are missing, they are fetched again from the scheduler's topic log after
``RECOVER_AFTER_S``; if they are still missing ``EVENTS_GRACE_S`` later, the attempt
fails (``EventsLost``) and the step's retries apply.

Answers and control: ``ctx.checkpoint()`` first reads the run's control Variable
(``go`` / ``hold`` / ``stop``, set by the executor on every run state change: one
scheduler round trip, no executor involved): on ``go`` it returns, on ``stop`` it
raises ``Cancelled``. On ``hold`` (and for ``ctx.approve()`` and ``ctx.add_step()``,
always) the task sends a request in its ordered stream and waits for the answer: a
``distributed.Variable`` named after the attempt and the request's index, announced by a
``distributed.Event`` of the same name (the task waits on the Event, which times out
quietly every ``ANSWER_POLL_S`` to check that Dask still wants the task; a Variable's
get logs an error on the scheduler at each timeout). The executor answers by running
its own ``Executor.checkpoint`` / ``request_approval`` / ``add_step``, so pause, cancel,
approvals and added steps mean exactly what they mean for local steps (a paused step
waits at its checkpoint, holding its worker thread).

Exactly one run per attempt
---------------------------
Dask re-runs a task whose worker died on another worker; the step must not be run
again behind the executor's back. Each attempt has a claim, a ``distributed.MultiLock``
named after its token, that the task takes (without waiting) before calling the step.
A re-run of a started attempt finds the claim taken and raises ``WorkerLost`` without
running anything; the executor then records the attempt as failed with ``WorkerLost``
(naming the worker that was lost) and the step's ``retries`` decide what follows, as
for any failed attempt. ``KilledWorker`` (Dask giving up on the task) counts the same.
The task never releases its claim (a worker lost right after the step returned must
not lead to a re-run either); the runner releases the run's claims, with everything
else the run holds on the scheduler, when the run settles (completed, failed,
cancelled), *before* that is recorded: once ``run.wait()`` returns, the caller may close
its Client (``with Client(...) as client: wf.run(store, dask=client)``).
The same claim revokes tasks that have not started when the run is cancelled: the
executor takes it itself, and if it gets it the task can never start.

Results come back to the executor's process
-------------------------------------------
``run.result()``, result previews and the inputs of dependents need them there. A
result that pickles to at most ``INLINE_RESULT_BYTES`` rides in the ``end`` message; a
larger one is fetched with ``Future.result()``. Futures are released once their
attempt is recorded; dependents receive the values. Keeping results on the cluster
(futures passed to dependents) would save copies of big data, but Dask recomputes a
result lost with its worker: a finished step would run again (or, with the claim,
fail its dependents) after it was recorded as completed. Steps with big outputs should
write them to shared storage and return a reference (and ``ctx.file`` them).

Width, pause and cancel
-----------------------
A node is marked running when its task is submitted. ``max_workers`` defaults to no
limit (``DEFAULT_WIDTH``): every ready step is submitted at once, several in one graph,
and Dask's scheduler queues what its workers cannot take yet. Bounding it by the
cluster's threads would make "running" mean "on a thread", at the price of a round
trip through this process before each new task starts (a fan-out would run several
times slower than Dask itself). What a queued task must not do is start after a pause
or a cancel: the runner then takes the claims of the tasks that have not started; on
a pause their nodes pause as at a checkpoint before their first line (``running ->
paused``, resubmitted on resume), on a cancel they are cancelled. Tasks that have
started stop at their next checkpoint, as local steps do; a paused or waiting step
keeps its worker thread, as locally.

The package, cut where these notes are: ``channel`` (what a task and its runner say to
each other, and the order it is recorded in), ``worker`` (the task, on the worker) and
``runner`` (``DaskRunner``, in the executor's process).
"""

from .channel import INLINE_RESULT_BYTES
from .runner import DEFAULT_WIDTH, DaskRunner, EventsLost

__all__ = ["DaskRunner", "EventsLost", "INLINE_RESULT_BYTES", "DEFAULT_WIDTH"]
