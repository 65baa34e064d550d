"""The Access endpoints under the reserved prefix (default ``/cdn-cgi/access``) on every host.

The login round trip (DESIGN.md §4)::

    app without cookie --302--> AUTH/<prefix>/login?app=AUD&redirect_url=URL
        chooser (skipped with one IdP) --> IdP --> AUTH/<prefix>/callback
        global session cookie on AUTH (a new id at every login), policy check (deny: 403 here)
        --302--> APP/<prefix>/authorized?app=AUD&code=CODE   (one-time, 60 s, bound to AUD)
        app cookie set (host-only, JWT for AUD) --302--> URL

A second app finds the session on the auth domain and gets its hand-off code at once. The
one-time PIN replaces the IdP round trip with two forms (``otp/email``, ``otp/code``) on the
auth domain; both carry a CSRF token bound to the browser's login-state cookie and a sealed
value naming the login they belong to, and the login state is consumed only when the code is
right, by the same single-use check the OAuth callback uses.

Other endpoints: ``logout`` (ends the global session everywhere; on an app host it also clears
that host's app cookies and continues to the auth domain), ``get-identity`` (the identity as
JSON, never an IdP token), ``certs`` (the signing keys) and ``cli``
(:mod:`edge.access.cli_login`, the command-line login). Every return URL goes through
:func:`edge.access.redirects.safe_return_url`; a bad one becomes the application's root.

Failures are pages (JSON for clients that ask for it) with a stable ``reason`` in the log;
none of them redirects back into the login, so a persistent failure can never loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import quote, urlencode, urlsplit

from edge.access.catalog import CatalogApp
from edge.access.cli_login import CLI_ENDPOINT, CliLogin
from edge.access.identity import Identity
from edge.access.idp import IdpError, RedirectProvider
from edge.access.idp.otp import OtpIssuer
from edge.access.pages import (
    IdpChoice,
    access_error_page,
    denied_page,
    logged_out_page,
    login_page,
)
from edge.access.pin_forms import PinForms
from edge.access.policy import decide
from edge.access.redirects import safe_return_url
from edge.access.responses import (
    client_facts,
    query_params,
    send_json,
    send_page,
    send_redirect,
    wants_json_answer,
)
from edge.access.runtime import LOGIN_COOKIE, SESSION_COOKIE, AccessRuntime
from edge.access.sessions import (
    LOGIN_STATE_LIFETIME,
    GlobalSession,
    LoginState,
    SessionError,
    build_cookie,
    cookie_values,
    expired_cookie,
)
from edge.http11 import IncomingRequest, RequestBody, ResponseWriter

__all__ = [
    "AccessFlow",
    "Exchange",
    "auth_origin",
    "identity_document",
    "login_url",
]

log = logging.getLogger(__name__)


class AccessFlow:
    """Answers every request under the prefix; ``handle`` is called by the gate."""

    def __init__(self, runtime: AccessRuntime) -> None:
        self._rt = runtime
        self.prefix = runtime.settings.prefix.rstrip("/")

    # -- dispatch ------------------------------------------------------------------------

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def handle(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        cookie_headers: Sequence[bytes],
    ) -> None:
        endpoint = request.path[len(self.prefix) :]
        exchange = Exchange(self._rt, self.prefix, request, body, respond, cookie_headers)
        handlers = {
            "/login": ("GET", exchange.login),
            "/callback": ("GET", exchange.callback),
            "/authorized": ("GET", exchange.authorized),
            "/logout": ("GET", exchange.logout),
            "/get-identity": ("GET", exchange.get_identity),
            "/certs": ("GET", exchange.certs),
            CLI_ENDPOINT: ("GET", CliLogin(exchange).start),
            "/otp/email": ("POST", PinForms(exchange).otp_email),
            "/otp/code": ("POST", PinForms(exchange).otp_code),
        }
        found = handlers.get(endpoint)
        if found is None:
            await respond.error(404, "Not found", "There is no such Access endpoint.")
            return
        method, handler = found
        allowed: tuple[str, ...] = (method, "HEAD") if method == "GET" else (method,)
        if endpoint == "/logout":
            allowed = ("GET", "HEAD", "POST")
        if request.method not in allowed:
            await respond.error(405, "Method not allowed", f"Use {method} here.")
            return
        await handler()


class Exchange:
    """One request to an Access endpoint, with what every endpoint needs at hand."""

    def __init__(
        self,
        runtime: AccessRuntime,
        prefix: str,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        cookie_headers: Sequence[bytes],
    ) -> None:
        self.rt = runtime
        self.prefix = prefix
        self.request = request
        self.body = body
        self.respond = respond
        self.cookie_headers = cookie_headers
        self.params = query_params(request.query)
        self.secure = request.scheme == "https"

    # -- small helpers -------------------------------------------------------------------

    @property
    def on_auth_domain(self) -> bool:
        settings = self.rt.settings
        return bool(settings.auth_domain) and self.request.host == settings.auth_host

    @property
    def auth_origin(self) -> str:
        return auth_origin(self.rt, self.request)

    def callback_url(self) -> str:
        return f"{self.auth_origin}{self.prefix}/callback"

    def app_origin(self, app: CatalogApp) -> str:
        """Where an app lives when no return URL says: its host, on the listener's port."""
        auth = self.rt.settings.auth_domain
        port = auth.rpartition(":")[2] if ":" in auth else str(self.request.port or "")
        return f"{self.request.scheme}://{app.host}{':' + port if port else ''}"

    def safe_url(self, candidate: str, default: str) -> str:
        hosts = self.rt.catalog.hosts
        return safe_return_url(candidate, served_hosts=hosts.__contains__, default=default)

    def app_return_url(self, app: CatalogApp, candidate: str) -> str:
        """An absolute URL on ``app``'s host to come back to after the login."""
        root = self.app_origin(app) + (app.path_prefix if app.path_prefix != "/" else "/")
        url = self.safe_url(candidate, root)
        if url.startswith("/"):
            return self.app_origin(app) + url
        if (urlsplit(url).hostname or "") != app.host:
            return root
        return url

    def cookie(self, name: str, value: str, *, max_age: float, path: str = "/") -> str:
        return build_cookie(name, value, max_age=max(int(max_age), 0), secure=self.secure,
                            path=path)

    def clear_cookie(self, name: str, *, path: str = "/") -> str:
        return expired_cookie(name, secure=self.secure, path=path)

    def clear_login_cookie(self) -> str:
        return self.clear_cookie(LOGIN_COOKIE, path=self.prefix)

    def first_cookie(self, name: str) -> str | None:
        values = cookie_values(self.cookie_headers, name)
        return values[0] if values else None

    def current_session(self) -> GlobalSession | None:
        """The auth-domain session this browser holds (any planted or stale value is ignored)."""
        for value in cookie_values(self.cookie_headers, SESSION_COOKIE)[:4]:
            session = self.rt.sessions.session_from_cookie(value)
            if session is not None:
                return session
        return None

    async def failure(
        self, status: int, title: str, detail: str, *, reason: str,
        cookies: Sequence[str] = (),
    ) -> None:
        log.info(
            "access flow refused request=%s path=%s status=%d reason=%s",
            self.request.request_id, self.request.path, status, reason,
        )
        if wants_json_answer(self.request):
            await send_json(self.respond, status, {"error": reason, "message": detail}, cookies)
            return
        page = access_error_page(status, title, detail, request_id=self.request.request_id)
        await send_page(self.respond, status, page, cookies)

    # -- login ---------------------------------------------------------------------------

    async def login(self) -> None:
        catalog = self.rt.catalog
        aud = self.params.get("app", "")
        if not self.on_auth_domain:
            await self.login_elsewhere()
            return
        app = catalog.app_by_aud(aud) if aud else None
        if app is None:
            await self.failure(
                400, "Unknown application",
                "Open the application you want to use; it sends you here to sign in.",
                reason="unknown_app",
            )
            return
        return_url = self.app_return_url(app, self.params.get("redirect_url", ""))
        session = self.current_session()
        if session is not None and not self.needs_fresh_login(session, app):
            await self.admit(session, app, return_url)
            return
        offered = [idp for idp in app.idps]
        chosen = self.params.get("idp")
        if chosen is not None:
            offered = [idp for idp in offered if idp.name == chosen]
        if not offered:
            await self.failure(
                503 if chosen is None else 400, "No way to sign in",
                "This application has no identity provider to sign in with.",
                reason="no_identity_provider",
            )
            return
        if len(offered) > 1:
            choices = [
                IdpChoice(
                    idp.name,
                    idp.name,
                    f"{self.prefix}/login?"
                    + urlencode({"app": aud, "redirect_url": return_url, "idp": idp.name}),
                )
                for idp in offered
            ]
            await send_page(self.respond, 200, login_page(app.name, choices))
            return
        await self.start_idp(app, offered[0].name, return_url)

    def needs_fresh_login(self, session: GlobalSession, app: CatalogApp) -> bool:
        revoked = self.rt.catalog.is_revoked(
            email=session.identity.email, aud=app.aud, created_at=session.created_at
        )
        return revoked or self.rt.sessions.requires_fresh_login(session, app.aud)

    async def login_elsewhere(self) -> None:
        """``login`` on an application's host: continue at the auth domain for that app."""
        if not self.rt.settings.auth_domain:
            await self.failure(503, "Sign-in is not set up",
                               "This gateway has no auth domain configured.",
                               reason="no_auth_domain")
            return
        app = self.rt.catalog.app_for(self.request.host, "/")
        if app is None:
            await self.failure(404, "Unknown application",
                               "No application is served on this host.", reason="unknown_app")
            return
        port = f":{self.request.port}" if self.request.port else ""
        here = f"{self.request.scheme}://{self.request.host}{port}/"
        target = self.safe_url(self.params.get("redirect_url", ""), here)
        if target.startswith("/"):
            target = here.rstrip("/") + target
        query = urlencode({"app": app.aud, "redirect_url": target})
        await send_redirect(self.respond, f"{self.auth_origin}{self.prefix}/login?{query}")

    async def start_idp(self, app: CatalogApp, idp_name: str, return_url: str) -> None:
        provider = self.rt.providers.get(idp_name)
        if provider is None:
            await self.failure(
                502, "Sign-in is unavailable",
                f"The identity provider {idp_name!r} is not usable right now.",
                reason="idp_unusable",
            )
            return
        login, login_cookie = self.rt.sessions.begin_login(
            return_url=return_url, app_aud=app.aud, idp=idp_name
        )
        cookie = self.cookie(LOGIN_COOKIE, login_cookie, max_age=LOGIN_STATE_LIFETIME,
                             path=self.prefix)
        if isinstance(provider, OtpIssuer):
            await PinForms(self).otp_email_form(app, login, login_cookie, cookies=[cookie])
            return
        try:
            await provider.prepare()
            url = provider.authorization_url(
                state=login.state,
                nonce=login.nonce,
                code_challenge=login.code_challenge,
                redirect_uri=self.callback_url(),
            )
        except IdpError as error:
            await self.failure(
                error.http_status, "Sign-in is unavailable",
                "The identity provider could not be reached. Try again in a moment.",
                reason=f"idp_{error.reason}",
            )
            return
        await send_redirect(self.respond, url, [cookie])

    async def callback(self) -> None:
        if not self.on_auth_domain:
            await self.failure(404, "Not found", "Sign-in finishes on the auth domain.",
                               reason="not_auth_domain")
            return
        clear = self.clear_login_cookie()
        try:
            login = self.rt.sessions.consume_login_state(
                self.first_cookie(LOGIN_COOKIE), self.params.get("state")
            )
        except SessionError as error:
            await self.failure(
                error.http_status, "This sign-in has expired",
                "The sign-in did not start in this browser, was already used, or took too "
                "long. Open the application again to start over.",
                reason=f"login_state_{error.reason}", cookies=[clear],
            )
            return
        provider = self.rt.providers.get(login.idp)
        if provider is None or isinstance(provider, OtpIssuer):
            await self.failure(400, "Sign-in failed", "This sign-in used another method.",
                               reason="idp_mismatch", cookies=[clear])
            return
        redirect_provider: RedirectProvider = provider
        try:
            code = redirect_provider.check_callback(self.params)
            identity = await redirect_provider.exchange(
                code=code,
                code_verifier=login.pkce_verifier,
                redirect_uri=self.callback_url(),
                expected_nonce=login.nonce,
            )
        except IdpError as error:
            await self.failure(
                error.http_status, "Sign-in failed",
                "The identity provider did not confirm who you are. Open the application "
                "again to start over.",
                reason=f"idp_{error.reason}", cookies=[clear],
            )
            return
        await self.finish_login(login, identity, [clear])

    async def finish_login(
        self, login: LoginState, identity: Identity, cookies: list[str]
    ) -> None:
        """A login succeeded: a brand-new session, then the app's policy and hand-off."""
        duration = self.rt.settings.global_session_duration
        session = self.rt.sessions.create(identity, duration=duration, idp=login.idp)
        cookies.append(
            self.cookie(SESSION_COOKIE, self.rt.sessions.session_cookie_value(session),
                        max_age=duration)
        )
        app = self.rt.catalog.app_by_aud(login.app_aud) if login.app_aud else None
        if app is None:
            await self.failure(400, "Unknown application",
                               "The application of this sign-in no longer exists.",
                               reason="unknown_app", cookies=cookies)
            return
        await self.admit(session, app, login.return_url, cookies)

    async def admit(
        self,
        session: GlobalSession,
        app: CatalogApp,
        return_url: str,
        cookies: Sequence[str] = (),
    ) -> None:
        """Check the app's policy for a signed-in person; hand off or show the denial."""
        path = urlsplit(return_url).path or "/"
        facts = client_facts(self.request, path)
        decision = decide(session.identity, app.policies, facts)
        self.rt.audit_decision(
            app,
            client_ip=self.request.client_ip,
            action=decision.action,
            reason=decision.reason,
            policy=decision.policy,
            identity=session.identity,
            host=self.request.host,
            path=path,
            request_id=self.request.request_id,
            stage="login",
        )
        if decision.action not in ("allow", "bypass"):
            await self.denied(app, session.identity, decision.reason, cookies)
            return
        try:
            code = self.rt.sessions.issue_handoff(session.id, app.aud, return_url)
        except SessionError as error:
            await self.failure(error.http_status, "Sign-in failed",
                               "Your session ended; open the application again.",
                               reason=f"handoff_{error.reason}", cookies=cookies)
            return
        parts = urlsplit(return_url)
        query = urlencode({"app": app.aud, "code": code})
        target = f"{parts.scheme}://{parts.netloc}{self.prefix}/authorized?{query}"
        await send_redirect(self.respond, target, cookies)

    async def denied(
        self, app: CatalogApp, identity: Identity, reason: str, cookies: Sequence[str] = ()
    ) -> None:
        if reason == "no_policy_matched" and not identity.email_verified:
            reason = "email_unverified"
        if wants_json_answer(self.request):
            await send_json(self.respond, 403, {"error": "access_denied", "reason": reason},
                            cookies)
            return
        page = denied_page(app.name, identity.email, reason, f"{self.prefix}/logout",
                           self.request.request_id)
        await send_page(self.respond, 403, page, cookies)

    # -- the application's side of the hand-off --------------------------------------------

    async def authorized(self) -> None:
        aud = self.params.get("app", "")
        app = self.rt.catalog.app_by_aud(aud) if aud else None
        if app is None or app.host != self.request.host:
            await self.failure(400, "Sign-in failed", "This sign-in link is not for this site.",
                               reason="handoff_wrong_host")
            return
        sessions = self.rt.sessions
        try:
            session, return_url = sessions.redeem_handoff(self.params.get("code"), app.aud)
            app_session = sessions.open_app_session(
                session.id, app.aud, duration=float(app.spec.session_duration)
            )
        except SessionError as error:
            await self.failure(
                error.http_status, "This sign-in link has expired",
                "Sign-in links work once and only for a minute. Open the application again.",
                reason=f"handoff_{error.reason}",
            )
            return
        token = self.rt.app_token(session, app, app_session)
        max_age = app_session.expires_at - self.rt.clock()
        cookie = self.cookie(app.spec.cookie_name, token, max_age=max_age, path=app.path_prefix)
        target = self.app_return_url(app, return_url)
        log.info("app session opened app=%s nonce=%s", app.name, session.nonce)
        await send_redirect(self.respond, target, [cookie])

    # -- logout, identity, keys ------------------------------------------------------------

    async def logout(self) -> None:
        if not self.on_auth_domain:
            await self.logout_app_host()
            return
        for value in cookie_values(self.cookie_headers, SESSION_COOKIE)[:4]:
            session = self.rt.sessions.session_from_cookie(value)
            if session is not None:
                self.rt.end_session(session)
        cookies = [self.clear_cookie(SESSION_COOKIE)]
        candidate = self.params.get("redirect_url", "")
        target = self.safe_url(candidate, "") if candidate else ""
        if target:
            await send_redirect(self.respond, target, cookies)
            return
        await send_page(self.respond, 200, logged_out_page(), cookies)

    async def logout_app_host(self) -> None:
        """Clear this host's app cookies, end their session, and finish on the auth domain."""
        cookies: list[str] = []
        for app in self.rt.catalog.apps:
            if app.host != self.request.host:
                continue
            for value in cookie_values(self.cookie_headers, app.spec.cookie_name)[:4]:
                verified = self.rt.verify_app_token(value, app.aud)
                session = None if verified is None else self.rt.sessions.get_by_nonce(
                    verified.nonce
                )
                if session is not None:
                    self.rt.end_session(session)
            cookies.append(self.clear_cookie(app.spec.cookie_name, path=app.path_prefix))
        if not self.rt.settings.auth_domain:
            await send_page(self.respond, 200, logged_out_page(), cookies)
            return
        candidate = self.params.get("redirect_url", "")
        target = self.safe_url(candidate, "") if candidate else ""
        query = "?" + urlencode({"redirect_url": target}) if target else ""
        await send_redirect(self.respond, f"{self.auth_origin}{self.prefix}/logout{query}",
                            cookies)

    async def get_identity(self) -> None:
        identity: Identity | None = None
        session: GlobalSession | None = None
        if self.on_auth_domain:
            session = self.current_session()
        else:
            for app in self.rt.catalog.apps:
                if app.host != self.request.host or session is not None:
                    continue
                for value in cookie_values(self.cookie_headers, app.spec.cookie_name)[:4]:
                    verified = self.rt.verify_app_token(value, app.aud)
                    if verified is None:
                        continue
                    found = self.rt.sessions.get_by_nonce(verified.nonce)
                    if found is not None and self.rt.sessions.check_app_session(found.id, app.aud):
                        session = found
                        break
        if session is not None:
            identity = session.identity
        if identity is None or session is None:
            await send_json(self.respond, 401, {"error": "not_authenticated"})
            return
        await send_json(self.respond, 200, identity_document(identity, session))

    async def certs(self) -> None:
        document = self.rt.keys.current.certs_document(self.rt.clock())
        await send_json(self.respond, 200, document, cache=b"public, max-age=300")


def identity_document(identity: Identity, session: GlobalSession) -> dict[str, object]:
    """What ``get-identity`` returns: who the person is, never a provider's token."""
    return {
        "email": identity.email,
        "email_verified": identity.email_verified,
        "name": identity.name,
        "sub": identity.sub,
        "user_uuid": identity.sub,
        "groups": list(identity.groups),
        "idp": {"id": session.idp, "type": identity.idp},
        "amr": list(identity.amr),
        "iat": int(session.created_at),
        "exp": int(session.expires_at),
        "identity_nonce": session.nonce,
    }


def auth_origin(runtime: AccessRuntime, request: IncomingRequest) -> str:
    """``scheme://AUTH_DOMAIN[:port]`` as seen from ``request``.

    The auth domain is served by the same listener as every app, so an auth domain configured
    without a port is reached on the port the visitor is already using.
    """
    domain = runtime.settings.auth_domain
    if ":" not in domain and request.port:
        domain = f"{domain}:{request.port}"
    return f"{request.scheme}://{domain}"


def login_url(runtime: AccessRuntime, request: IncomingRequest, app: CatalogApp) -> str:
    """Where an unauthenticated visitor of ``app`` is sent: the auth domain's login."""
    port = f":{request.port}" if request.port else ""
    original = f"{request.scheme}://{request.host}{port}{request.target}"
    query = urlencode({"app": app.aud, "redirect_url": original}, quote_via=quote)
    prefix = runtime.settings.prefix.rstrip("/")
    return f"{auth_origin(runtime, request)}{prefix}/login?{query}"

