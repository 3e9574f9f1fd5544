"""The Jupyter server extension: configuration, the store (through its gateway), the hub
and the routes."""

from __future__ import annotations

import uuid
from typing import Any, Optional

from jupyter_server.auth.identity import IdentityProvider, LegacyIdentityProvider, PasswordIdentityProvider
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

import engine
from engine.owners import default_owner
from engine.store import default_url

from .gateway import StoreGateway
from .handlers import routes
from .hub import EventHub

#: jupyter_server's own identity providers: they authenticate a shared token or password
#: and hand out random anonymous users, so on them the user is the server's own.
_ANONYMOUS_IDENTITY_PROVIDERS = (IdentityProvider, PasswordIdentityProvider, LegacyIdentityProvider)
#: Seconds a stopping server waits for its store calls under way.
STOP_DRAIN_S = 5.0


class CmbAgentApp(ExtensionApp):
    """Serves workflow runs from the store over WebSocket and REST (``cmbagent/api``)."""

    name = "cmbagent_jupyter"

    db_url = Unicode(
        help="Store URL. Default: $CMBAGENT_DB_URL, else the per-user SQLite file that "
             "kernels use too (engine.default_url()).").tag(config=True)
    tail_interval = Float(0.002, help="Seconds between checks of the store for new events.").tag(config=True)
    reap_interval = Float(5.0, help="Seconds between checks for runs whose executor died.").tag(config=True)
    recheck_interval = Float(5.0, help="With a store that pushes notifications (PostgreSQL): seconds "
                                       "between re-checks for new events when none was announced "
                                       "(bounds the delay of a lost notification, and how soon a "
                                       "store that stopped answering is noticed).").tag(config=True)
    store_unavailable_after = Float(3.0, help="Seconds a store call may take before every client is "
                                              "told the store is not answering (and told again "
                                              "when it answers).").tag(config=True)
    store_timeout = Float(10.0, help="Seconds a REST request waits for the store before answering "
                                     "503 (Retry-After). WebSocket reads wait however long it "
                                     "takes: the event loop never does.").tag(config=True)
    store_threads = Integer(4, help="Threads that make the server's store calls (off the event "
                                    "loop).").tag(config=True)
    heartbeat_interval = Float(15.0, help="Seconds between client pings, announced in hello.").tag(config=True)
    max_frame_bytes = Integer(2**20, help="Largest client frame accepted; larger ones close the "
                                          "socket with code 1009.").tag(config=True)
    client_buffer_bytes = Integer(16 * 2**20, help="Bytes a slow client may have unsent (every frame "
                                                   "counts; events are sent a window of 128 KiB at a "
                                                   "time). A client past it, or that wrote nothing for "
                                                   "10 s while owed more than it, has its events, "
                                                   "snapshots and run lists dropped for a reset + "
                                                   "snapshot once it has drained; a client whose "
                                                   "unsent replies exceed it by a quarter is closed "
                                                   "(code 1008).").tag(config=True)
    share_runs = Bool(False, help="Serve every run in the store to every user of this server. "
                                  "By default a user lists, streams and controls only the runs they "
                                  "own, and someone else's run is answered as an unknown one. Set "
                                  "True when the users of a shared store should see each other's "
                                  "runs (e.g. a team's PostgreSQL store).").tag(config=True)

    freeze_gc = Bool(True, help="When the first socket opens, exclude the objects the server holds "
                                "by then from Python's garbage collector (gc.freeze()): full "
                                "collections of them would pause every socket at once.").tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        return default_url()

    @validate("tail_interval", "reap_interval", "heartbeat_interval", "recheck_interval",
              "store_unavailable_after", "store_timeout")
    def _positive_seconds(self, proposal):
        if not proposal["value"] > 0:
            raise TraitError(f"CmbAgentApp.{proposal['trait'].name} must be > 0, not {proposal['value']}")
        return proposal["value"]

    @validate("max_frame_bytes", "client_buffer_bytes")
    def _positive_bytes(self, proposal):
        if proposal["value"] < 1024:
            raise TraitError(f"CmbAgentApp.{proposal['trait'].name} must be >= 1024 bytes, "
                             f"not {proposal['value']}")
        return proposal["value"]

    @validate("store_threads")
    def _some_threads(self, proposal):
        if proposal["value"] < 1:
            raise TraitError(f"CmbAgentApp.store_threads must be >= 1, not {proposal['value']}")
        return proposal["value"]

    def initialize_settings(self) -> None:
        self.server_id = uuid.uuid4().hex
        self.gateway = StoreGateway(threads=self.store_threads,
                                    unavailable_after=self.store_unavailable_after, logger=self.log)
        self.hub = EventHub(self.gateway, self.tail_interval, self.reap_interval,
                            self.recheck_interval, self.freeze_gc)

        def opener():
            return engine.open_store(self.db_url)

        if self.gateway.open(opener):
            self.log.info("cmbagent_jupyter: serving runs from %s", self.gateway.store.url)
            return
        # Loudly, and without failing the extension: its routes answer 503 with the reason
        # (not 404) until a background retry opens the store.
        where = self.db_url if not self.db_url.startswith("postgres") else "the PostgreSQL store"
        self.log.error("cmbagent_jupyter: cannot open the run store (%s): %s. cmbagent/api answers "
                       "503 until it opens; retrying in the background.", where, self.gateway.open_error)
        self.serverapp.io_loop.add_callback(self.gateway.keep_opening, opener)

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        await self.hub.stop()
        # Let the calls under way end (a hung store's do not: shutting down must not hang).
        await self.gateway.drain(STOP_DRAIN_S)
        self.gateway.close()

    def visible(self, run_doc: dict, user: Any) -> bool:
        """May ``user`` (a request's ``current_user``) see and control this run?"""
        if self.share_runs:
            return True
        name = self.owner_name(user)
        return name is not None and run_doc.get("owner") == name

    def owner_name(self, user: Any) -> Optional[str]:
        """The owner ``user``'s runs are recorded under.

        A server that names its users (JupyterHub's identity provider, or any other
        custom one) gives ``user.username``. jupyter_server's stock providers only tell a
        token or password holder from a stranger, naming them "Anonymous <moon>" at
        random: there the user is the server process's own, as in the runs its kernels
        start (``engine.owners.default_owner``)."""
        if type(self.serverapp.identity_provider) in _ANONYMOUS_IDENTITY_PROVIDERS:
            return default_owner()
        return getattr(user, "username", None)
