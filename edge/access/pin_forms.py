"""The one-time PIN's two forms on the auth domain: ask for an address, then for the code.

Both forms carry a CSRF token bound to the browser's login-state cookie (another browser
cannot post them) and a sealed ``flow`` value that names the login, the IdP and the app they
belong to (nobody can change which). The login state itself is consumed only once the code is
right, by the same single-use check the OAuth callback uses, and the login then finishes like
any other (:meth:`edge.access.flow.Exchange.finish_login`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from edge.access.catalog import CatalogApp
from edge.access.idp import IdpError
from edge.access.idp.otp import OtpIssuer
from edge.access.pages import otp_code_page, otp_email_page
from edge.access.responses import query_params, send_page
from edge.access.runtime import LOGIN_COOKIE
from edge.access.sealing import SealedValueInvalid
from edge.access.sessions import LOGIN_STATE_LIFETIME, LoginState, SessionError

if TYPE_CHECKING:
    from edge.access.flow import Exchange

__all__ = ["PinForms"]

MAX_FORM_BYTES = 16 * 1024
_OTP_FORM = "otp-form"
_OTP_CODE = "otp-code"


class PinForms:
    """The one-time PIN endpoints of one request (``otp/email``, ``otp/code``)."""

    def __init__(self, exchange: Exchange) -> None:
        self.ex = exchange

    async def otp_email_form(
        self,
        app: CatalogApp,
        login: LoginState,
        login_cookie: str,
        *,
        cookies: Sequence[str] = (),
        email: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> None:
        flow = self.ex.rt.sealer.seal(
            _OTP_FORM, {"idp": login.idp, "state": login.state, "app": app.aud},
            lifetime=LOGIN_STATE_LIFETIME,
        )
        page = otp_email_page(
            app_name=app.name,
            action_url=f"{self.ex.prefix}/otp/email",
            csrf_token=self.ex.rt.csrf_token(login_cookie),
            email=email,
            error=error,
            hidden={"flow": flow},
        )
        await send_page(self.ex.respond, status, page, cookies)

    async def read_form(self) -> dict[str, str] | None:
        content_type = (self.ex.request.header(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/x-www-form-urlencoded":
            return None
        data = bytearray()
        while chunk := await self.ex.body.receive_some():
            data += chunk
            if len(data) > MAX_FORM_BYTES:
                return None
        try:
            return query_params(data.decode("ascii"))
        except UnicodeDecodeError:
            return None

    async def otp_form(self, purpose: str) -> tuple[dict[str, str], dict[str, object]] | None:
        """The posted form and its sealed login binding, after the CSRF check."""
        if not self.ex.on_auth_domain:
            await self.ex.failure(404, "Not found", "Sign-in happens on the auth domain.",
                               reason="not_auth_domain")
            return None
        form = await self.read_form()
        login_cookie = self.ex.first_cookie(LOGIN_COOKIE)
        if form is None or not self.ex.rt.csrf_valid(login_cookie, form.get("csrf_token")):
            await self.ex.failure(403, "This form has expired",
                               "Open the application again to start a new sign-in.",
                               reason="otp_csrf")
            return None
        try:
            flow = self.ex.rt.sealer.open(purpose, form.get("flow", ""))
        except SealedValueInvalid as error:
            await self.ex.failure(400, "This form has expired",
                               "Open the application again to start a new sign-in.",
                               reason=f"otp_flow_{error.reason}")
            return None
        return form, flow

    def otp_issuer(self, flow: dict[str, object]) -> tuple[OtpIssuer, CatalogApp] | None:
        provider = self.ex.rt.providers.get(str(flow.get("idp")))
        app = self.ex.rt.catalog.app_by_aud(str(flow.get("app")))
        if not isinstance(provider, OtpIssuer) or app is None:
            return None
        return provider, app

    async def otp_email(self) -> None:
        posted = await self.otp_form(_OTP_FORM)
        if posted is None:
            return
        form, flow = posted
        found = self.otp_issuer(flow)
        if found is None:
            await self.ex.failure(400, "Sign-in failed", "This sign-in method is gone.",
                               reason="otp_unknown_idp")
            return
        issuer, app = found
        email = form.get("email", "")[:254]
        try:
            challenge = await issuer.start(email)
        except IdpError as error:
            message = {
                "bad_email": "Enter a valid e-mail address.",
                "too_many_codes": "Too many codes were sent to this address; wait a while.",
            }.get(error.reason)
            if message is None:
                await self.ex.failure(error.http_status, "The code could not be sent",
                                   "Try again in a moment.", reason=f"otp_{error.reason}")
                return
            page = otp_email_page(
                app_name=app.name, action_url=f"{self.ex.prefix}/otp/email",
                csrf_token=form.get("csrf_token", ""), email=email, error=message,
                hidden={"flow": form.get("flow", "")},
            )
            await send_page(self.ex.respond, error.http_status, page)
            return
        code_flow = self.ex.rt.sealer.seal(
            _OTP_CODE, {**flow, "challenge": challenge}, lifetime=LOGIN_STATE_LIFETIME
        )
        await self.otp_code_form(issuer, app, form.get("csrf_token", ""), code_flow, challenge)

    async def otp_code_form(
        self, issuer: OtpIssuer, app: CatalogApp, csrf: str, flow: str, challenge: str,
        *, error: str | None = None, status: int = 200,
    ) -> None:
        page = otp_code_page(
            app_name=app.name,
            action_url=f"{self.ex.prefix}/otp/code",
            csrf_token=csrf,
            email=issuer.email_of(challenge) or "your address",
            error=error,
            hidden={"flow": flow},
            restart_url=f"{self.ex.prefix}/login?" + urlencode({"app": app.aud}),
        )
        await send_page(self.ex.respond, status, page)

    async def otp_code(self) -> None:
        posted = await self.otp_form(_OTP_CODE)
        if posted is None:
            return
        form, flow = posted
        found = self.otp_issuer(flow)
        challenge = flow.get("challenge")
        if found is None or not isinstance(challenge, str):
            await self.ex.failure(400, "Sign-in failed", "This sign-in method is gone.",
                               reason="otp_unknown_idp")
            return
        issuer, app = found
        try:
            identity = issuer.verify(challenge, form.get("code", ""))
        except IdpError as error:
            if error.reason == "wrong_code":
                await self.otp_code_form(
                    issuer, app, form.get("csrf_token", ""), form.get("flow", ""), challenge,
                    error="That code is not right. Check the message and try again.",
                    status=401,
                )
                return
            await self.ex.failure(
                error.http_status, "The code cannot be used",
                "The code expired, was already used, or was guessed wrong too often. "
                "Open the application again to get a new one.",
                reason=f"otp_{error.reason}", cookies=[self.ex.clear_login_cookie()],
            )
            return
        clear = self.ex.clear_login_cookie()
        try:
            login = self.ex.rt.sessions.consume_login_state(
                self.ex.first_cookie(LOGIN_COOKIE), str(flow.get("state"))
            )
        except SessionError as error:
            await self.ex.failure(error.http_status, "This sign-in has expired",
                               "Open the application again to start over.",
                               reason=f"login_state_{error.reason}", cookies=[clear])
            return
        if login.idp != issuer.name or login.app_aud != app.aud:
            await self.ex.failure(400, "Sign-in failed", "This code belongs to another sign-in.",
                               reason="otp_login_mismatch", cookies=[clear])
            return
        await self.ex.finish_login(login, identity, [clear])
