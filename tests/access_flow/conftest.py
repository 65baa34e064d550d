"""Deployments for the Access flow tests: a real OpenID provider, or the one-time PIN, in front
of three applications on their own domains."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from idp.fixture import (
    OidcAccount,
    OidcClient,
    OidcProvider,
    StartOidcProvider,
    sign_in_at_provider_async,
    start_oidc_provider,
)

from edge.store.access_records import AppRecord

from .harness import (
    AUTH,
    PREFIX,
    OtpInbox,
    Stack,
    location,
    otp_inbox,
    start_stack,
)

__all__ = ["start_oidc_provider"]  # the provider fixture, imported so pytest finds it

HOSTS = ["app1.localhost", "app2.localhost", "app3.localhost", "open.localhost"]
ACCOUNTS: list[OidcAccount] = [
    {"sub": "alice", "email": "alice@corp.com", "email_verified": True, "name": "Alice",
     "groups": ["eng", "admins"]},
    {"sub": "bob", "email": "bob@corp.com", "email_verified": True, "name": "Bob",
     "groups": ["sales"]},
    {"sub": "eve", "email": "eve@corp.com", "email_verified": False, "name": "Eve",
     "groups": ["eng"]},
]
CLIENT_ID = "tunnelgate-edge"
CLIENT_SECRET = "edge secret: with spaces & symbols"


@dataclass
class Corp:
    """Three apps behind a real OpenID provider: app1 for group eng, app2 for anyone at
    corp.com, app3 for group admins; open.localhost has no application."""

    stack: Stack
    provider: OidcProvider
    app1: AppRecord
    app2: AppRecord
    app3: AppRecord

    @property
    def callback(self) -> str:
        return self.stack.url(AUTH, f"{PREFIX}/callback")

    async def sign_in(
        self, visitor: httpx.AsyncClient, url: str, account: str
    ) -> httpx.Response:
        """From an app URL through the provider to the callback's answer (not followed)."""
        login = location(await visitor.get(url))
        to_provider = location(await visitor.get(login))
        assert to_provider.startswith(self.provider.issuer), to_provider
        callback = await sign_in_at_provider_async(
            visitor, to_provider, login=account, redirect_uri=self.callback
        )
        return await visitor.get(str(callback))


@pytest.fixture
async def corp(
    nursery: trio.Nursery, tmp_path: Path, start_oidc_provider: StartOidcProvider
) -> Corp:
    stack = await start_stack(nursery, tmp_path / "edge", HOSTS)
    client: OidcClient = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [stack.url(AUTH, f"{PREFIX}/callback")],
    }
    provider = await trio.to_thread.run_sync(
        start_oidc_provider, tmp_path, [client], ACCOUNTS
    )
    secret_file = tmp_path / "corp.secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    await stack.add_idp({
        "name": "corp", "type": "oidc", "issuer": provider.issuer, "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file), "groups_claim": "groups",
        "scopes": ["openid", "email", "profile", "groups"],
    })
    app1 = await stack.add_app(
        {"name": "one", "domain": "app1.localhost", "idps": ["corp"]},
        [{"name": "engineers", "action": "allow", "include": [{"group": "eng"}]}],
    )
    app2 = await stack.add_app(
        {"name": "two", "domain": "app2.localhost", "idps": ["corp"]},
        [{"name": "staff", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    app3 = await stack.add_app(
        {"name": "three", "domain": "app3.localhost", "idps": ["corp"]},
        [{"name": "admins", "action": "allow", "include": [{"group": "admins"}]}],
    )
    return Corp(stack, provider, app1, app2, app3)


@pytest.fixture
def inbox() -> Iterator[OtpInbox]:
    with otp_inbox() as codes:
        yield codes


@dataclass
class PinDeployment:
    """One app (app1) behind the one-time PIN with codes in the log; policies vary by test."""

    stack: Stack
    app: AppRecord
    inbox: OtpInbox


@pytest.fixture
async def pin(nursery: trio.Nursery, tmp_path: Path, inbox: OtpInbox) -> PinDeployment:
    stack = await start_stack(nursery, tmp_path / "edge", HOSTS)
    await stack.add_idp({"name": "pin", "type": "otp", "delivery": "log"})
    app = await stack.add_app(
        {"name": "one", "domain": "app1.localhost", "idps": ["pin"]},
        [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    return PinDeployment(stack, app, inbox)
