"""``<prefix>/cli`` on an application's host: hands the app token to ``tunnelgate access login``.

The command line cannot hold a browser session, so it borrows one::

    tunnelgate access login https://APP      (listens on http://127.0.0.1:PORT/callback)
      browser --> APP/<prefix>/cli?redirect_url=http://127.0.0.1:PORT/callback&state=S
        no app session: the normal login (auth domain, IdP, ``authorized``), which returns
        here with ``login=done`` added
        app session: the app token (the runtime's minter, as the gate uses it)
      --302--> http://127.0.0.1:PORT/callback?token=JWT&state=S

The token travels in a redirect, so the target is held to the strict rule of
:func:`edge.access.redirects.is_loopback_callback` (``http`` on ``127.0.0.1``, ``localhost`` or
``[::1]`` with an explicit port) *before* anything else happens, including the login: a bad
``redirect_url`` gets a 400 page, never a token. ``state`` is the command's own CSRF value; the
edge only checks its shape and echoes it, and the command compares it.

``login=done`` breaks loops: if the browser comes back from a login and still has no usable
app session (an app whose cookie path does not cover the prefix, a denied policy), the answer is
a page, not another trip to the login.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from edge.access.catalog import CatalogApp
from edge.access.policy import decide
from edge.access.redirects import is_loopback_callback
from edge.access.responses import client_facts, send_redirect
from edge.access.sessions import AppSession, GlobalSession, cookie_values

if TYPE_CHECKING:
    from edge.access.flow import Exchange

__all__ = ["CLI_ENDPOINT", "CliLogin", "valid_cli_state"]

log = logging.getLogger(__name__)

CLI_ENDPOINT = "/cli"
MAX_COOKIE_CANDIDATES = 4
_STATE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_LOGIN_DONE = "done"


def valid_cli_state(state: str) -> bool:
    """A state the edge will echo: URL-safe characters only, 16 to 128 of them."""
    return _STATE.fullmatch(state) is not None


class CliLogin:
    """The ``cli`` endpoint of one request."""

    def __init__(self, exchange: Exchange) -> None:
        self.ex = exchange

    async def start(self) -> None:
        ex = self.ex
        callback = ex.params.get("redirect_url", "")
        state = ex.params.get("state", "")
        if not is_loopback_callback(callback):
            await ex.failure(
                400, "Refused sign-in target",
                "A command-line sign-in can only deliver its token to a listener on this "
                "computer (http://127.0.0.1:PORT, http://localhost:PORT or http://[::1]:PORT).",
                reason="cli_callback_not_loopback",
            )
            return
        if not valid_cli_state(state):
            await ex.failure(400, "Refused sign-in", "The sign-in request has no valid state.",
                             reason="cli_state_invalid")
            return
        app = ex.rt.catalog.app_for(ex.request.host, "/")
        if app is None:
            await ex.failure(404, "Unknown application",
                             "No application is served on this host.", reason="unknown_app")
            return
        signin = self.app_signin(app)
        if signin is None:
            await self.sign_in_first(app, callback, state)
            return
        session, app_session = signin
        decision = decide(session.identity, app.policies, client_facts(ex.request, "/"))
        ex.rt.audit_decision(
            app,
            client_ip=ex.request.client_ip,
            action=decision.action,
            reason=decision.reason,
            policy=decision.policy,
            identity=session.identity,
            host=ex.request.host,
            path=ex.request.path,
            request_id=ex.request.request_id,
            stage="cli_login",
        )
        if not decision.granted:
            await ex.denied(app, session.identity, decision.reason)
            return
        token = ex.rt.app_token(session, app, app_session)
        separator = "&" if "?" in callback else "?"
        target = callback + separator + urlencode({"token": token, "state": state})
        log.info("cli login token issued app=%s nonce=%s request=%s",
                 app.name, session.nonce, ex.request.request_id)
        await send_redirect(ex.respond, target)

    def app_signin(self, app: CatalogApp) -> tuple[GlobalSession, AppSession] | None:
        """The live session behind this browser's app cookie, checked as the gate checks it."""
        rt = self.ex.rt
        values = cookie_values(self.ex.cookie_headers, app.spec.cookie_name)
        for value in values[:MAX_COOKIE_CANDIDATES]:
            verified = rt.verify_app_token(value, app.aud)
            session = None if verified is None else rt.sessions.get_by_nonce(verified.nonce)
            if session is None:
                continue
            app_session = rt.sessions.check_app_session(session.id, app.aud)
            if app_session is None or rt.catalog.is_revoked(
                email=session.identity.email, aud=app.aud, created_at=session.created_at
            ):
                continue
            return session, app_session
        return None

    async def sign_in_first(self, app: CatalogApp, callback: str, state: str) -> None:
        """No app session yet: the usual login, coming back here once (``login=done``)."""
        ex = self.ex
        if ex.params.get("login") == _LOGIN_DONE:
            await ex.failure(
                401, "Sign-in did not finish",
                "You signed in, but this application's session is not available here. "
                "Run the command again, or open the application in this browser first.",
                reason="cli_no_app_session",
            )
            return
        if not ex.rt.settings.auth_domain:
            await ex.failure(503, "Sign-in is not set up",
                             "This gateway has no auth domain configured.",
                             reason="no_auth_domain")
            return
        port = f":{ex.request.port}" if ex.request.port else ""
        again = urlencode({"redirect_url": callback, "state": state, "login": _LOGIN_DONE})
        here = f"{ex.request.scheme}://{ex.request.host}{port}{ex.prefix}{CLI_ENDPOINT}?{again}"
        query = urlencode({"app": app.aud, "redirect_url": here})
        await send_redirect(ex.respond, f"{ex.auth_origin}{ex.prefix}/login?{query}")
