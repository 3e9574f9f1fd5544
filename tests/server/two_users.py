"""An identity provider that names two users, alice and bob, each by their own token
(``Authorization: token <user>-token``), as JupyterHub's provider names hub users."""

from __future__ import annotations

from jupyter_server.auth.identity import IdentityProvider, User

USERS = ("alice", "bob")


def auth(user: str) -> dict:
    """The headers that authenticate a request as ``user``."""
    return {"Authorization": f"token {user}-token"}


class TwoUsers(IdentityProvider):
    async def get_user_token(self, handler) -> User | None:
        token = self.get_token(handler)
        name = next((u for u in USERS if token == f"{u}-token"), None)
        return User(username=name) if name else None
