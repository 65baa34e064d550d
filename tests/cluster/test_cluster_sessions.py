"""Access sessions across the edges of one PostgreSQL store.

A login on one edge is good on every other (the sealing secret and the signing keys live in
the store, and each store write of a session is announced to every edge), and a logout or a
revocation on one edge refuses the next request on another once that edge applied the notice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from access_flow.harness import (
    AUTH,
    PREFIX,
    OtpInbox,
    Stack,
    follow,
    location,
    new_visitor,
    otp_inbox,
)
from access_flow.origin import AccessOrigin, AssertionChecker, serve_origin
from store_pg.database import throwaway_database

from edge.access.runtime import SEALING_KEY_FILE, shared_sealing_secret
from edge.config import load_edge_config
from edge.server import EdgeRuntime, serve_edge
from edge.store.access_records import parse_app_spec, parse_idp, parse_policy_list
from edge.store.postgres import PostgresStore

from .conftest import Cluster, ClusterEdgeUnderTest, create_tunnel, start_connector

pytestmark = pytest.mark.e2e

PROPAGATION_BOUND = 2.0
"""What the cluster promises for a logout or revocation to reach every edge."""
APP1 = "app1.localhost"
APP2 = "app2.localhost"
EMAIL = "rita@corp.com"
STAFF = [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}]


@dataclass
class AccessCluster:
    edges: list[ClusterEdgeUnderTest]
    stacks: list[Stack]
    inbox: OtpInbox


def _holds_session(edge: ClusterEdgeUnderTest, email: str) -> bool:
    access = edge.runtime.access
    assert access is not None
    return any(
        record["identity"]["email"] == email
        for record in access.sessions.export_state()["sessions"]
    )


def _serves_apps(edge: ClusterEdgeUnderTest, hosts: Sequence[str]) -> bool:
    access = edge.runtime.access
    assert access is not None
    return "pin" in access.providers and all(
        access.catalog.app_for(host, "/") is not None for host in hosts
    )


async def _start_edge(
    nursery: trio.Nursery, cluster: Cluster, name: str
) -> ClusterEdgeUnderTest:
    folder = cluster.folder / name
    folder.mkdir()
    config_path = folder / "edge.toml"
    config_path.write_text(
        cluster.edge_toml(name, folder) + f'[access]\nauth_domain = "{AUTH}"\n'
    )
    config = load_edge_config(config_path)
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[EdgeRuntime]) -> None:
        try:
            with scope:
                await serve_edge(config, task_status=task_status)
        finally:
            stopped.set()

    runtime: EdgeRuntime = await nursery.start(run)
    return ClusterEdgeUnderTest(name, runtime, scope, stopped, cluster)


async def _access_cluster(
    nursery: trio.Nursery, cluster: Cluster, inbox: OtpInbox, count: int
) -> AccessCluster:
    """``count`` edges with the one-time PIN IdP and two apps, each edge holding one
    connection of the tunnel that serves them."""
    edges = [await _start_edge(nursery, cluster, f"edge-{n}") for n in range(count)]
    first = edges[0]
    checker = AssertionChecker(
        certs_url=f"http://{first.public}{PREFIX}/certs", issuer=f"http://{AUTH}"
    )
    origin = AccessOrigin(checker)
    origin_url: str = await nursery.start(serve_origin, origin)
    credentials = await create_tunnel(first, "access", APP1)
    routed = await first.admin("POST", f"/v1/tunnels/{credentials.tunnel_id}/routes",
                               {"hostname": APP2})
    assert routed.status == 201, routed.text

    store = first.runtime.state.store

    def write_access() -> None:
        store.create_idp(parse_idp({"name": "pin", "type": "otp", "delivery": "log"}))
        for name, host in (("one", APP1), ("two", APP2)):
            record = store.create_app(parse_app_spec({"name": name, "domain": host,
                                                      "idps": ["pin"]}))
            store.set_policies(name, parse_policy_list(STAFF))
            checker.audiences[record.host] = record.aud

    await trio.to_thread.run_sync(write_access)
    for edge in edges:
        # Apps, IdP, routes and the tunnel's credential all reach every edge by notification.
        def ready(edge: ClusterEdgeUnderTest = edge) -> bool:
            state = edge.runtime.state
            return (
                _serves_apps(edge, (APP1, APP2))
                and credentials.tunnel_id in state.credentials
                and state.routes.lookup(APP2) is not None
            )

        await edge.wait_until(ready, "the Access apps and the tunnel")
    await start_connector(nursery, credentials, origin_url, *edges, ha_connections=count)
    stacks = [Stack(edge.runtime, origin, cluster.folder / edge.name) for edge in edges]
    return AccessCluster(edges, stacks, inbox)


@pytest.fixture
def inbox() -> Iterator[OtpInbox]:
    with otp_inbox() as codes:
        yield codes


async def _sign_in(deployment: AccessCluster, visitor: httpx.AsyncClient) -> None:
    """The one-time PIN login, entirely on the first edge."""
    stack = deployment.stacks[0]
    page = await stack.otp_login(visitor, deployment.inbox, stack.url(APP1), EMAIL)
    assert page.status_code == 200, page.text[:500]
    assert page.json()["assertion"]["claims"]["email"] == EMAIL


async def _refused_with_login(stack: Stack, app_cookie: str) -> None:
    async with new_visitor() as fresh:
        fresh.cookies.set("CF_Authorization", app_cookie, domain=APP1)
        answer = await fresh.get(stack.url(APP1))
        assert answer.status_code == 302, answer.text[:500]
        assert f"{AUTH}:{stack.port}{PREFIX}/login" in location(answer)


async def test_a_login_on_one_edge_is_good_on_another_until_logout_there(
    nursery: trio.Nursery, cluster: Cluster, inbox: OtpInbox
) -> None:
    deployment = await _access_cluster(nursery, cluster, inbox, 2)
    edge_a, edge_b = deployment.edges
    stack_a, stack_b = deployment.stacks
    async with new_visitor() as visitor:
        await _sign_in(deployment, visitor)
        app_cookie = visitor.cookies.get("CF_Authorization", domain=APP1)
        assert app_cookie
        await edge_b.wait_until(lambda: _holds_session(edge_b, EMAIL), "the imported session",
                                within=PROPAGATION_BOUND)

        # The same browser, now on edge B: its app cookie opens app1 straight away.
        on_b = await visitor.get(stack_b.url(APP1, "/from-b"))
        assert on_b.status_code == 200, on_b.text[:500]
        assert on_b.json()["assertion"]["claims"]["email"] == EMAIL
        assert on_b.json()["target"] == "/from-b"
        # The app token alone (the CLI's header) works on B too.
        async with new_visitor() as cli:
            by_header = await cli.get(stack_b.url(APP1), headers={"cf-access-token": app_cookie})
            assert by_header.status_code == 200, by_header.text[:500]
        # B opens the auth-domain cookie A sealed: app2 is reached through the hand-off only,
        # without another PIN.
        codes_sent = len(inbox.codes)
        login = location(await visitor.get(stack_b.url(APP2)))
        handoff = location(await visitor.get(login))
        assert f"{APP2}:{stack_b.port}{PREFIX}/authorized" in handoff
        page = await follow(visitor, await visitor.get(handoff))
        assert page.status_code == 200, page.text[:500]
        assert page.json()["assertion"]["claims"]["email"] == EMAIL
        assert len(inbox.codes) == codes_sent

        # Logout on A; B drops the session as soon as it applies the notice.
        ended = await visitor.get(stack_a.url(AUTH, f"{PREFIX}/logout"))
        assert ended.status_code in (200, 302), ended.text[:500]
        assert not _holds_session(edge_a, EMAIL)
        await edge_b.wait_until(lambda: not _holds_session(edge_b, EMAIL), "the logout",
                                within=PROPAGATION_BOUND)
    await _refused_with_login(stack_b, app_cookie)
    await _refused_with_login(stack_a, app_cookie)


async def test_a_revocation_by_email_on_one_edge_refuses_on_a_third(
    nursery: trio.Nursery, cluster: Cluster, inbox: OtpInbox
) -> None:
    deployment = await _access_cluster(nursery, cluster, inbox, 3)
    edge_a, _edge_b, edge_c = deployment.edges
    stack_c = deployment.stacks[2]
    async with new_visitor() as visitor:
        await _sign_in(deployment, visitor)
        app_cookie = visitor.cookies.get("CF_Authorization", domain=APP1)
        assert app_cookie
        await edge_c.wait_until(lambda: _holds_session(edge_c, EMAIL), "the imported session",
                                within=PROPAGATION_BOUND)
        on_c = await visitor.get(stack_c.url(APP1))
        assert on_c.status_code == 200, on_c.text[:500]

    revoked = await edge_a.admin("POST", "/v1/sessions/revoke", {"email": EMAIL})
    assert revoked.status == 200, revoked.text
    await edge_c.wait_until(lambda: not _holds_session(edge_c, EMAIL), "the revocation",
                            within=PROPAGATION_BOUND)
    await _refused_with_login(stack_c, app_cookie)


async def test_every_edge_of_a_store_gets_the_same_sealing_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    legacy = os.urandom(32)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    (first_dir / SEALING_KEY_FILE).write_text(legacy.hex() + "\n")
    (first_dir / SEALING_KEY_FILE).chmod(0o600)
    with PostgresStore(cluster.url) as first, PostgresStore(cluster.url) as second:
        # An edge that had its own file offers it; a store that has none keeps it.
        assert shared_sealing_secret(first, first_dir) == legacy
        # An edge without a file gets the store's, and a private local copy of it.
        assert shared_sealing_secret(second, second_dir) == legacy
        copy = second_dir / SEALING_KEY_FILE
        assert bytes.fromhex(copy.read_text()) == legacy
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        # Once stored, nobody's candidate replaces it.
        assert second.shared_secret("access-sealing", os.urandom(32)) == legacy


async def test_edges_starting_together_agree_on_one_secret() -> None:
    with throwaway_database() as url:
        stores = [PostgresStore(url) for _ in range(4)]
        try:
            results: list[bytes] = []

            async def claim(store: PostgresStore) -> None:
                value = await trio.to_thread.run_sync(store.shared_secret, "race", os.urandom(32))
                results.append(value)

            async with trio.open_nursery() as nursery:
                for store in stores:
                    nursery.start_soon(claim, store)
        finally:
            for store in stores:
                store.close()
    assert len(results) == 4
    assert len(set(results)) == 1
