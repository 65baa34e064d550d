"""The edge's own error pages, in HTML for people and JSON for programs.

A visitor who hits an error should learn which side failed (their request, the edge, the tunnel,
the origin) and what to try, and an operator should be able to find the event in the log from
the request id on the page. Every interpolated value is escaped: hosts, titles and details can
carry text the client chose.

Each status has a default page; a caller can pick a more specific one by key (``tunnel_offline``
and ``origin_unreachable`` are both 502) and override the title and the one-line explanation.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

__all__ = [
    "PAGES",
    "ErrorPage",
    "RenderedPage",
    "page_for",
    "render_error",
    "wants_json",
]


@dataclass(frozen=True)
class ErrorPage:
    """One kind of failure: a stable code, its status, and words for a person."""

    code: str
    status: int
    title: str
    explanation: str
    advice: str


@dataclass(frozen=True)
class RenderedPage:
    body: bytes
    content_type: bytes


PAGES: dict[str, ErrorPage] = {
    page.code: page
    for page in (
        ErrorPage(
            "bad_request",
            400,
            "Bad request",
            "The request could not be understood.",
            "Check the address for unusual characters and try again.",
        ),
        ErrorPage(
            "forbidden",
            403,
            "Access denied",
            "You are not allowed to reach this application.",
            "Ask the application's administrator for access.",
        ),
        ErrorPage(
            "unknown_host",
            404,
            "Unknown host",
            "No application is served at this address.",
            "Check the host name in the address bar.",
        ),
        ErrorPage(
            "not_found",
            404,
            "Not found",
            "Nothing is served at this path.",
            "Check the address and try again.",
        ),
        ErrorPage(
            "request_timeout",
            408,
            "Request timeout",
            "The request was not received in time.",
            "Check your network connection and try again.",
        ),
        ErrorPage(
            "payload_too_large",
            413,
            "Request too large",
            "The request body is larger than this server accepts.",
            "Send a smaller request.",
        ),
        ErrorPage(
            "misdirected_request",
            421,
            "Misdirected request",
            "This connection cannot serve the requested host.",
            "Open the address again in a new tab or window.",
        ),
        ErrorPage(
            "headers_too_large",
            431,
            "Request headers too large",
            "The request carried more or larger headers than this server accepts.",
            "Clear this site's cookies and try again.",
        ),
        ErrorPage(
            "internal_error",
            500,
            "Internal error",
            "The gateway failed while handling the request.",
            "Try again; if it keeps happening, give the request id to the administrator.",
        ),
        ErrorPage(
            "not_implemented",
            501,
            "Not implemented",
            "The request uses a feature this server does not support.",
            "Send the request without the unusual encoding or method.",
        ),
        ErrorPage(
            "http_version_not_supported",
            505,
            "HTTP version not supported",
            "The request uses an HTTP version this server does not speak.",
            "Use HTTP/1.1.",
        ),
        ErrorPage(
            "origin_unreachable",
            502,
            "Origin unreachable",
            "The application behind this address could not be reached.",
            "Try again shortly; the administrator may need to check the origin service.",
        ),
        ErrorPage(
            "tunnel_offline",
            502,
            "Tunnel offline",
            "The tunnel that serves this application has no live connection.",
            "Try again shortly; the administrator should check that the connector runs.",
        ),
        ErrorPage(
            "service_unavailable",
            503,
            "Service unavailable",
            "The gateway cannot take this request right now.",
            "Try again in a moment.",
        ),
        ErrorPage(
            "origin_timeout",
            504,
            "Origin timeout",
            "The application behind this address did not answer in time.",
            "Try again; if it keeps happening, the application may be overloaded.",
        ),
    )
}

_DEFAULT_FOR_STATUS = {
    400: "bad_request",
    403: "forbidden",
    404: "unknown_host",
    408: "request_timeout",
    413: "payload_too_large",
    421: "misdirected_request",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    502: "origin_unreachable",
    503: "service_unavailable",
    504: "origin_timeout",
    505: "http_version_not_supported",
}


def page_for(status: int, code: str | None = None) -> ErrorPage:
    """The page for ``code`` when given and known, else the default page for ``status``.

    A status without a page of its own gets a generic one with the right number.
    """
    if code is not None and code in PAGES:
        return PAGES[code]
    default = _DEFAULT_FOR_STATUS.get(status)
    if default is not None:
        return PAGES[default]
    family = "internal_error" if status >= 500 else "bad_request"
    generic = PAGES[family]
    return ErrorPage(generic.code, status, generic.title, generic.explanation, generic.advice)


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} {title}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; color: #222; background: #f6f6f4;
       margin: 0; padding: 3rem 1rem; }}
main {{ max-width: 36rem; margin: 0 auto; background: #fff; padding: 2rem;
       border-radius: 8px; box-shadow: 0 1px 3px rgba(0, 0, 0, .12); }}
h1 {{ font-size: 1.4rem; margin: 0 0 .75rem; }}
.status {{ color: #888; font-weight: normal; }}
dl {{ font-size: .85rem; color: #666; margin: 1.5rem 0 0; }}
dt {{ float: left; clear: left; width: 6rem; }}
dd {{ margin: 0 0 0 6rem; font-family: ui-monospace, monospace; word-break: break-all; }}
</style>
</head>
<body>
<main>
<h1><span class="status">{status}</span> {title}</h1>
<p>{explanation}</p>
<p>{advice}</p>
<dl>
{facts}
</dl>
</main>
</body>
</html>
"""


def render_error(
    status: int,
    *,
    code: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    host: str | None = None,
    request_id: str | None = None,
    tunnel: str | None = None,
    as_json: bool = False,
) -> RenderedPage:
    """Render the page for ``status``; ``detail`` replaces the standard one-line explanation."""
    page = page_for(status, code)
    explanation = detail or page.explanation
    if as_json:
        payload: dict[str, object] = {
            "error": page.code,
            "status": status,
            "message": explanation,
            "request_id": request_id,
        }
        if tunnel is not None:
            payload["tunnel"] = tunnel
        body = json.dumps(payload, ensure_ascii=True).encode("ascii")
        return RenderedPage(body, b"application/json")
    facts = [("Host", host), ("Tunnel", tunnel), ("Request id", request_id)]
    fact_html = "\n".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>"
        for label, value in facts
        if value
    )
    text = _HTML.format(
        status=status,
        title=html.escape(title or page.title),
        explanation=html.escape(explanation),
        advice=html.escape(page.advice),
        facts=fact_html,
    )
    return RenderedPage(text.encode("utf-8"), b"text/html; charset=utf-8")


def wants_json(accept: bytes | None) -> bool:
    """Whether an ``Accept`` header prefers JSON over HTML (HTML wins ties and ``*/*``)."""
    if not accept:
        return False
    json_q = 0.0
    html_q = 0.0
    for item in accept.decode("latin-1").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "application/json" or (
            media.startswith("application/") and media.endswith("+json")
        ):
            json_q = max(json_q, q)
        elif media in ("text/html", "application/xhtml+xml", "text/*"):
            html_q = max(html_q, q)
    return json_q > 0 and json_q > html_q
