"""How the Access layer answers a browser or a script itself: pages, JSON, redirects.

Shared by the gate (login redirects, denials) and the Access endpoints. Pages go out with the
headers :data:`edge.access.pages.PAGE_HEADERS` prescribes; every answer is ``no-store`` unless
it says otherwise, because identity answers must never be cached by anyone in between.
Scripts (``X-Requested-With``, or ``Accept`` preferring JSON) get JSON instead of a redirect,
so a ``fetch`` that lost its session sees a 401 it can act on.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Sequence
from urllib.parse import parse_qs

from edge.access.identity import IPAddress, RequestFacts
from edge.access.pages import PAGE_HEADERS
from edge.http11 import IncomingRequest, ResponseWriter
from edge.pages import wants_json
from tunnel.bounded_memo import BoundedMemo

__all__ = [
    "MAX_QUERY_CHARS",
    "client_facts",
    "query_params",
    "send_json",
    "send_page",
    "send_redirect",
    "wants_json_answer",
]

MAX_QUERY_CHARS = 8192
_PAGE_HEADERS = tuple((name.encode("ascii"), value.encode("ascii")) for name, value in PAGE_HEADERS)


async def send_page(
    respond: ResponseWriter, status: int, page: str, cookies: Sequence[str] = ()
) -> None:
    body = page.encode("utf-8")
    headers = [
        *_PAGE_HEADERS,
        (b"Content-Length", str(len(body)).encode("ascii")),
        *((b"Set-Cookie", cookie.encode("ascii")) for cookie in cookies),
    ]
    await respond.start(status, headers)
    await respond.send(body)
    await respond.end()


async def send_json(
    respond: ResponseWriter,
    status: int,
    payload: object,
    cookies: Sequence[str] = (),
    *,
    cache: bytes = b"no-store",
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Cache-Control", cache),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Content-Length", str(len(body)).encode("ascii")),
        *((b"Set-Cookie", cookie.encode("ascii")) for cookie in cookies),
    ]
    await respond.start(status, headers)
    await respond.send(body)
    await respond.end()


async def send_redirect(
    respond: ResponseWriter, location: str, cookies: Sequence[str] = ()
) -> None:
    headers = [
        (b"Location", location.encode("ascii")),
        (b"Cache-Control", b"no-store"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Content-Length", b"0"),
        *((b"Set-Cookie", cookie.encode("ascii")) for cookie in cookies),
    ]
    await respond.start(302, headers)
    await respond.end()


@functools.lru_cache(maxsize=4096)
def _client_address(text: str) -> IPAddress:
    address = _ADDRESSES.get(text)
    if address is None:
        try:
            address = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            address = ipaddress.IPv4Address(0)
        _ADDRESSES.remember(text, address, len(text))
    return address


# Parsing an address costs more than the policy check that reads it, and clients come back:
# the addresses seen are remembered (bounded).
_ADDRESSES: BoundedMemo[str, IPAddress] = BoundedMemo(4096, 64)


def client_facts(request: IncomingRequest, path: str | None = None) -> RequestFacts:
    """The request facts policies see; an unparsable peer address counts as 0.0.0.0.

    The gate remembers a sign-in's decisions per client address (``_RememberedSignin``): a fact
    of the request added here must join that key."""
    address = _client_address(request.client_ip)
    return RequestFacts(client_ip=address, path=request.path if path is None else path)


def wants_json_answer(request: IncomingRequest) -> bool:
    """``fetch``/XHR callers get JSON (401, 403) instead of a redirect or a page."""
    return request.header(b"x-requested-with") is not None or wants_json(
        request.header(b"accept")
    )


def query_params(query: str | None) -> dict[str, str]:
    """The first value of each parameter of a query string; anything unreadable is empty."""
    if not query or len(query) > MAX_QUERY_CHARS:
        return {}
    try:
        parsed = parse_qs(query, keep_blank_values=True, max_num_fields=32, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return {}
    return {key: values[0] for key, values in parsed.items()}
