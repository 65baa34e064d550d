"""The pages a person sees while signing in: the chooser, the one-time PIN forms, denial, logout.

They are plain server-rendered HTML: every control is a real link or form, so they work without
JavaScript, with a keyboard and with a screen reader (one ``<main>`` with an ``<h1>``, labelled
inputs, visible focus). Everything interpolated is HTML-escaped, because an app name, an e-mail
address or a reason can carry text somebody else chose; link targets must be relative paths or
http(s) URLs.

A denied person gets a page, never a redirect: redirecting them back to login would loop
forever, since the same identity would be denied again.

:data:`PAGE_HEADERS` are the response headers these pages are meant to be sent with: a content
security policy that allows nothing but the inline style below (by hash), no framing, no
referrer (hand-off codes travel in URLs), no caching.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

__all__ = [
    "DENIAL_REASONS",
    "PAGE_CSS",
    "PAGE_HEADERS",
    "IdpChoice",
    "access_error_page",
    "denied_page",
    "logged_out_page",
    "login_page",
    "otp_code_page",
    "otp_email_page",
]

PAGE_CSS = """\
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#f6f7f9;--card:#fff;--muted:#57606a;\
--accent:#0b57d0;--accent-fg:#fff;--line:#d0d7de;--bad:#b3261e}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--card:#161b22;\
--muted:#9da7b3;--accent:#7cacf8;--accent-fg:#0d1117;--line:#30363d;--bad:#ff8a80}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:1.0625rem/1.55 system-ui,\
-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:30rem;margin:8vh auto;padding:2rem;background:var(--card);\
border:1px solid var(--line);border-radius:12px}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 .75rem}
p{margin:.5rem 0 1rem}
.muted{color:var(--muted);font-size:.9375rem}
.error{color:var(--bad);font-weight:600}
ul.choices{list-style:none;padding:0;margin:1.25rem 0}
ul.choices li{margin:.5rem 0}
a{color:var(--accent)}
.button,button{display:block;width:100%;padding:.75rem 1rem;border-radius:8px;\
border:1px solid var(--accent);background:var(--accent);color:var(--accent-fg);\
font:inherit;font-weight:600;text-align:center;text-decoration:none;cursor:pointer}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input{display:block;width:100%;padding:.625rem .75rem;font:inherit;color:inherit;\
background:transparent;border:1px solid var(--line);border-radius:8px}
input.code{font-size:1.5rem;letter-spacing:.3em;font-variant-numeric:tabular-nums}
button{margin-top:1.25rem}
a:focus-visible,.button:focus-visible,button:focus-visible,input:focus-visible{\
outline:3px solid var(--accent);outline-offset:2px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:1rem 0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
"""

_CSS_HASH = base64.b64encode(hashlib.sha256(PAGE_CSS.encode("utf-8")).digest()).decode("ascii")
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/html; charset=utf-8"),
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
"""``form-action`` is left out on purpose: browsers apply it to the redirect that follows a form
post, and the OTP form's answer redirects to the application's own domain."""

DENIAL_REASONS: dict[str, str] = {
    "no_policy_matched": "None of this application's access policies includes you.",
    "blocked_by_policy": "An access policy of this application blocks your account.",
    "email_unverified": "Your identity provider has not verified your e-mail address.",
    "not_authenticated": "You are not signed in.",
    "app_revoked": "Your access to this application was revoked; sign in again.",
}

_SAFE_URL = re.compile(r"(?:/(?![/\\])|https?://)[^\s\"'<>\\]*", re.IGNORECASE)


class IdpChoice(NamedTuple):
    """One button of the chooser: the provider's name, what people read, where it starts."""

    name: str
    display_name: str
    url: str


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _url(url: str) -> str:
    """An escaped link target; anything but a path or an http(s) URL is a programming error."""
    if not _SAFE_URL.fullmatch(url):
        raise ValueError("page links must be relative paths or http(s) URLs")
    return _e(url)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{_e(title)}</title><style>{PAGE_CSS}</style></head>\n"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _hidden_fields(csrf_token: str, hidden: Mapping[str, str]) -> str:
    fields = [f'<input type="hidden" name="csrf_token" value="{_e(csrf_token)}">']
    fields += [
        f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'
        for name, value in hidden.items()
    ]
    return "".join(fields)


def _error_line(error: str | None) -> str:
    return f'<p class="error" role="alert">{_e(error)}</p>' if error else ""


def login_page(app_name: str, idps: Sequence[IdpChoice], *, notice: str | None = None) -> str:
    """The chooser: one link per identity provider of the app (the flow skips it for one)."""
    if not idps:
        raise ValueError("a login page needs at least one identity provider")
    items = "\n".join(
        f'<li><a class="button" href="{_url(choice.url)}" data-idp="{_e(choice.name)}">'
        f"Sign in with {_e(choice.display_name)}</a></li>"
        for choice in idps
    )
    body = (
        f"<h1>Sign in to {_e(app_name)}</h1>\n"
        f"{_error_line(notice)}"
        "<p>Choose how you want to prove who you are.</p>\n"
        f'<ul class="choices">\n{items}\n</ul>\n'
        '<p class="muted">Access is checked after you sign in.</p>'
    )
    return _page(f"Sign in to {app_name}", body)


def otp_email_page(
    *,
    app_name: str,
    action_url: str,
    csrf_token: str,
    email: str = "",
    error: str | None = None,
    hidden: Mapping[str, str] | None = None,
) -> str:
    """Step one of the one-time PIN: ask for the address to send a code to."""
    body = (
        f"<h1>Sign in to {_e(app_name)}</h1>\n"
        f"{_error_line(error)}"
        "<p>We will e-mail you a one-time code.</p>\n"
        f'<form method="post" action="{_url(action_url)}">'
        f"{_hidden_fields(csrf_token, hidden or {})}"
        '<label for="email">E-mail address</label>'
        f'<input id="email" name="email" type="email" value="{_e(email)}" required '
        'autocomplete="email" autocapitalize="off" spellcheck="false" autofocus>'
        '<button type="submit">Send me a code</button></form>'
    )
    return _page(f"Sign in to {app_name}", body)


def otp_code_page(
    *,
    app_name: str,
    action_url: str,
    csrf_token: str,
    email: str,
    code_length: int = 6,
    error: str | None = None,
    hidden: Mapping[str, str] | None = None,
    restart_url: str | None = None,
) -> str:
    """Step two of the one-time PIN: ask for the code that was sent to ``email``."""
    restart = (
        f'<p class="muted"><a href="{_url(restart_url)}">Use another address or get a new '
        "code</a></p>"
        if restart_url
        else ""
    )
    body = (
        "<h1>Enter your code</h1>\n"
        f"{_error_line(error)}"
        f"<p>We sent a {int(code_length)}-digit code to <strong>{_e(email)}</strong> "
        f"to sign in to {_e(app_name)}. It expires in a few minutes.</p>\n"
        f'<form method="post" action="{_url(action_url)}">'
        f"{_hidden_fields(csrf_token, hidden or {})}"
        '<label for="code">One-time code</label>'
        '<input id="code" name="code" class="code" type="text" inputmode="numeric" '
        f'pattern="[0-9]*" maxlength="{int(code_length)}" autocomplete="one-time-code" '
        "required autofocus>"
        '<button type="submit">Sign in</button></form>\n'
        f"{restart}"
    )
    return _page("Enter your code", body)


def denied_page(app_name: str, email: str, reason: str, logout_url: str, request_id: str) -> str:
    """The 403 page: which app, who is signed in, why, and a way out (sign out)."""
    explanation = DENIAL_REASONS.get(reason, "Your account is not allowed to use it.")
    who = email or "an account without an e-mail address"
    body = (
        "<h1>You don't have access</h1>\n"
        f"<p>You are signed in, but you cannot use <strong>{_e(app_name)}</strong>.</p>\n"
        f"<p>{_e(explanation)}</p>\n"
        "<dl>"
        f"<dt>Application</dt><dd>{_e(app_name)}</dd>"
        f"<dt>Signed in as</dt><dd>{_e(who)}</dd>"
        f"<dt>Reason</dt><dd><code>{_e(reason)}</code></dd>"
        f"<dt>Request id</dt><dd><code>{_e(request_id)}</code></dd>"
        "</dl>\n"
        f'<p><a class="button" href="{_url(logout_url)}">Sign out and use another account</a></p>'
        '<p class="muted">If you think you should have access, send the request id to the '
        "application's administrator.</p>"
    )
    return _page(f"Access denied: {app_name}", body)


def logged_out_page(*, login_url: str | None = None) -> str:
    """Shown after logout ends the session on every application."""
    again = (
        f'<p><a class="button" href="{_url(login_url)}">Sign in again</a></p>' if login_url else ""
    )
    body = (
        "<h1>You are signed out</h1>\n"
        "<p>Your session has ended on every application behind this gateway.</p>\n"
        f"{again}"
        '<p class="muted">You may also want to sign out at your identity provider.</p>'
    )
    return _page("Signed out", body)


def access_error_page(
    status: int, title: str, detail: str, *, request_id: str | None = None
) -> str:
    """A login-flow error (expired login, bad callback, provider down) in plain words."""
    reference = (
        f'<p class="muted">Request id: <code>{_e(request_id)}</code></p>' if request_id else ""
    )
    body = (
        f"<h1>{_e(title)}</h1>\n"
        f"<p>{_e(detail)}</p>\n"
        f'<p class="muted">Error {int(status)}.</p>\n'
        f"{reference}"
    )
    return _page(f"{title} ({int(status)})", body)
