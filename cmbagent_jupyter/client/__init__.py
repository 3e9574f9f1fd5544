"""The Python client of wire protocol v1 (asyncio + tornado.websocket).

    async with Client("http://127.0.0.1:8888/", token) as client:
        client.subscribe(run_id)
        async for item in client.events(run_id, markers=True):
            if isinstance(item, Marker):        # a snapshot replaced the state, or a reset
                ...
            else:                               # an applied event envelope (a dict)
                ...
            state = client.state(run_id)        # engine.snapshot.RunState, as of the last applied seq

Two layers, so the protocol rules can be tested without sockets:

- ``follower``: ``RunFollower``, the cursor of one run without I/O (the Python twin of
  ``labextension/src/follower.ts``): the frames of that run in, an ``Update`` (what to
  hand to the application, what to send back) out; ``backoff``: when to reconnect.
- ``socket``: ``Client``, the connection: reconnects, heartbeats, resubscribes, resends
  unacknowledged commands, and feeds each run's frames to its follower; ``stream``: the
  ``EventStream`` ``client.events()`` returns; ``urls``: a server's URLs.

Delivery to the application (``Client.events``): every applied event exactly once, in
seq order, as the envelope dict; with ``markers=True`` also ``Marker`` tuples where the
state changed other than by an event: ``Marker("snapshot", ...)`` (the state was
replaced; events between the old and the new seq are not delivered one by one) and
``Marker("reset", ...)`` (the server could not honour the cursor; a snapshot follows).
"""

from engine.states import SETTLED_WORKFLOW_STATES as SETTLED_STATES

from .backoff import Backoff
from .errors import ClientError, RunNotFound
from .follower import Item, Marker, RunFollower, Stats, Update, state_from_snapshot
from .socket import CONNECTION_STATES, Client
from .stream import EventStream
from .urls import http_base_url, ws_url

__all__ = ["Client", "RunFollower", "Backoff", "Marker", "Stats", "Update", "Item", "EventStream",
           "ClientError", "RunNotFound", "ws_url", "http_base_url", "state_from_snapshot",
           "CONNECTION_STATES", "SETTLED_STATES"]
