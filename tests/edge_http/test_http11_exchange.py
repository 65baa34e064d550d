"""Request/response exchanges: keep-alive, pipelining, HEAD, framing, failures, error pages."""

from __future__ import annotations

import ipaddress
import json

import pytest
import trio
import trio.testing

from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseStateError,
    ResponseWriter,
)

from .wire import PEER, H11Client, Recorder, open_connection, parse_responses, request, run_raw


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    recorder = Recorder()
    async with open_connection(recorder) as stream:
        client = H11Client(stream)
        first = await client.request("GET", "/one")
        second = await client.request("POST", "/two", body=b"payload")
        third = await client.request("GET", "/three?x=1")
    assert [r.body for r in (first, second, third)] == [
        b"GET /one",
        b"POST /two",
        b"GET /three?x=1",
    ]
    assert recorder.bodies == [b"", b"payload", b""]


async def test_pipelined_requests_are_answered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[str] = []

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        order.append(request.path)
        if request.path == "/slow":
            await trio.sleep(1)
        data = request.path.encode()
        await respond.start(200, [(b"content-length", str(len(data)).encode())])
        await respond.send(data)
        await respond.end()

    raw = request("/slow") + request("/fast", method="POST", body=b"abc") + request("/last")
    responses = parse_responses(await run_raw(raw, handler))
    assert [r.body for r in responses] == [b"/slow", b"/fast", b"/last"]
    assert order == ["/slow", "/fast", "/last"]


async def test_a_pipelined_body_left_unread_is_skipped_cleanly() -> None:
    async def ignores_body(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        await respond.start(204, [])
        await respond.end()

    raw = request("/a", method="POST", body=b"x" * 100) + request("/b")
    responses = parse_responses(await run_raw(raw, ignores_body))
    assert [r.status for r in responses] == [204, 204]


async def test_head_responses_carry_no_body_but_keep_their_length() -> None:
    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.start(200, [(b"content-length", b"11")])
        await respond.send(b"hello world")
        await respond.end()

    raw = request("/", method="HEAD") + request("/")
    data = await run_raw(raw, handler)
    responses = parse_responses(data, head_requests=[0])
    assert [r.status for r in responses] == [200, 200]
    assert responses[0].header(b"content-length") == b"11"
    assert responses[0].body == b""
    assert responses[1].body == b"hello world"
    assert data.count(b"hello world") == 1


async def test_response_without_length_is_chunked_and_streamed() -> None:
    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.start(200, [(b"content-type", b"text/plain"), (b"transfer-encoding", b"x")])
        for piece in (b"alpha ", b"beta ", b"gamma"):
            await respond.send(piece)
        await respond.end()

    async with open_connection(handler) as stream:
        response = await H11Client(stream).request("GET", "/")
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.body == b"alpha beta gamma"


async def test_http10_client_gets_a_close_delimited_body() -> None:
    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.start(200, [])
        await respond.send(b"old school")
        await respond.end()

    data = await run_raw(b"GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n", handler)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nold school")


async def test_handler_exception_answers_500_and_closes() -> None:
    async def broken(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        raise RuntimeError("boom")

    responses = parse_responses(await run_raw(request("/") + request("/again"), broken))
    assert [r.status for r in responses] == [500]
    assert responses[0].header(b"connection") == b"close"
    assert b"Internal error" in responses[0].body


async def test_handler_that_never_answers_gets_502() -> None:
    async def silent(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        return

    responses = parse_responses(await run_raw(request("/") + request("/again"), silent))
    assert [r.status for r in responses] == [502]


async def test_unfinished_response_closes_the_connection() -> None:
    async def truncated(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        await respond.start(200, [(b"content-length", b"100")])
        await respond.send(b"only part")

    data = await run_raw(request("/") + request("/again"), truncated)
    assert data.count(b"HTTP/1.1") == 1
    assert data.endswith(b"only part")


async def test_response_methods_enforce_their_order() -> None:
    problems: list[str] = []

    async def misuse(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        for attempt in (respond.send(b"x"), respond.end()):
            try:
                await attempt
            except ResponseStateError:
                problems.append("refused")
        await respond.start(200, [(b"content-length", b"0")])
        assert respond.started
        try:
            await respond.start(200, [])
        except ResponseStateError:
            problems.append("refused")
        await respond.end()

    responses = parse_responses(await run_raw(request("/"), misuse))
    assert [r.status for r in responses] == [200]
    assert problems == ["refused"] * 3


async def test_error_pages_are_html_by_default_and_json_when_preferred() -> None:
    async def not_found(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        await respond.error(404, "Unknown host", f"No application is served at {request.host}.")

    html_resp = parse_responses(await run_raw(request("/"), not_found))[0]
    assert html_resp.status == 404
    assert html_resp.header(b"content-type") == b"text/html; charset=utf-8"
    assert b"No application is served at app.example.com." in html_resp.body
    request_id = html_resp.header(b"x-request-id")
    assert request_id
    assert request_id in html_resp.body

    raw = request("/", headers=[("Accept", "application/json")])
    json_resp = parse_responses(await run_raw(raw, not_found))[0]
    assert json_resp.header(b"content-type") == b"application/json"
    payload = json.loads(json_resp.body)
    assert payload["error"] == "unknown_host"
    assert payload["status"] == 404
    assert payload["message"] == "No application is served at app.example.com."
    assert payload["request_id"] == (json_resp.header(b"x-request-id") or b"").decode()


async def test_error_page_escapes_client_controlled_text() -> None:
    async def echo_error(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        await respond.error(404, None, request.target)

    raw = request("/%3Cscript%3Ealert(1)%3C/script%3E?<b>")
    page = parse_responses(await run_raw(raw, echo_error))[0]
    assert b"<script>" not in page.body
    assert b"<b>" not in page.body


async def test_tunnel_offline_page_names_the_tunnel() -> None:
    async def offline(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.error(502, code="tunnel_offline", tunnel="grafana")

    page = parse_responses(await run_raw(request("/"), offline))[0]
    assert page.status == 502
    assert b"Tunnel offline" in page.body
    assert b"grafana" in page.body


async def test_request_carries_canonical_fields() -> None:
    recorder = Recorder()
    raw = request(
        "/a/./b/../c//d?q=%2F..%2F",
        host="APP.Example.COM.:8443",
        headers=[("X_Custom", "underscore names pass"), ("Accept", "text/plain")],
    )
    await run_raw(raw, recorder)
    seen = recorder.requests[0]
    assert (seen.method, seen.host, seen.port) == ("GET", "app.example.com", 8443)
    assert (seen.path, seen.query, seen.target) == ("/a/c/d", "q=%2F..%2F", "/a/c/d?q=%2F..%2F")
    assert seen.header(b"host") == b"app.example.com:8443"
    assert seen.header(b"x-custom") == b"underscore names pass"
    assert (seen.scheme, seen.client_ip, seen.peer_ip) == ("https", PEER, PEER)
    assert seen.http_version == "1.1"
    assert not seen.is_websocket_upgrade
    assert not seen.expects_continue


async def test_absolute_form_with_the_same_host_is_accepted() -> None:
    recorder = Recorder()
    raw = b"GET http://app.example.com/x/../y HTTP/1.1\r\nHost: APP.example.com\r\n\r\n"
    responses = parse_responses(await run_raw(raw, recorder))
    assert responses[0].status == 200
    assert recorder.requests[0].target == "/y"


async def test_forwarded_headers_are_ignored_from_untrusted_peers() -> None:
    recorder = Recorder()
    spoofed = [
        ("X-Forwarded-For", "198.51.100.7"),
        ("X_Forwarded_For", "198.51.100.8"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Uri", "/public"),
        ("Forwarded", "for=198.51.100.7"),
        ("X-Real-IP", "198.51.100.7"),
        ("X-Original-URL", "/public"),
        ("X-Rewrite-URL", "/public"),
    ]
    await run_raw(request("/admin", headers=spoofed), recorder)
    seen = recorder.requests[0]
    assert seen.client_ip == PEER
    assert seen.scheme == "https"
    forwarded = {n.lower().replace(b"_", b"-"): v for n, v in seen.headers}
    assert forwarded[b"x-forwarded-for"] == PEER.encode()
    assert forwarded[b"x-forwarded-proto"] == b"https"
    for name, _ in spoofed[2:]:
        if name.lower() != "x-forwarded-proto":
            assert name.lower().encode() not in forwarded


async def test_forwarded_headers_are_honoured_from_trusted_peers() -> None:
    recorder = Recorder()
    raw = request(
        "/",
        headers=[("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "http")],
    )
    trusted = [ipaddress.ip_network("203.0.113.0/24")]
    await run_raw(raw, recorder, trusted_proxies=trusted)
    seen = recorder.requests[0]
    assert seen.client_ip == "198.51.100.7"
    assert seen.peer_ip == PEER
    assert seen.scheme == "http"
    assert seen.header(b"x-forwarded-for") == f"198.51.100.7, {PEER}".encode()


async def test_connection_header_cannot_choose_removal_of_injected_headers() -> None:
    """The Access layer injects after hygiene; nothing later re-applies client nominations."""
    forwarded: list[list[tuple[bytes, bytes]]] = []

    async def injecting(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        request.headers = [
            *request.headers,
            (b"Cf-Access-Jwt-Assertion", b"edge-token"),
            (b"X-Forwarded-Email", b"user@corp.example"),
        ]
        forwarded.append(request.headers)
        await respond.start(204, [])
        await respond.end()

    raw = request(
        "/",
        headers=[
            ("Connection", "Cf-Access-Jwt-Assertion, X-Forwarded-Email, X-Forwarded-For"),
            ("X-Forwarded-Email", "victim@corp.example"),
        ],
    )
    await run_raw(raw, injecting)
    headers = {n.lower(): v for n, v in forwarded[0]}
    assert b"connection" not in headers
    assert headers[b"cf-access-jwt-assertion"] == b"edge-token"
    assert headers[b"x-forwarded-email"] == b"user@corp.example"
    assert headers[b"x-forwarded-for"] == PEER.encode()
    assert [v for n, v in forwarded[0] if n.lower() == b"x-forwarded-email"] == [
        b"user@corp.example"
    ]


@pytest.mark.parametrize(
    ("target", "outcome"),
    [
        ("/public/../admin", "/admin"),
        ("/%70ublic", "/public"),
        ("//public", "/public"),
        ("/admin;/public", "/admin;/public"),
        ("/public%2f..%2fadmin", 400),
        ("/public/%00", 400),
        ("/admin#/public", 400),
        ("/public/..;/admin", 400),
        ("/%C0%AE%C0%AE/admin", 400),
    ],
)
async def test_handler_and_origin_see_only_the_canonical_path(
    target: str, outcome: str | int
) -> None:
    recorder = Recorder()
    responses = parse_responses(await run_raw(request(target), recorder))
    if isinstance(outcome, int):
        assert responses[0].status == outcome
        assert recorder.requests == []
    else:
        assert recorder.requests[0].path == outcome
        assert recorder.requests[0].target == outcome


async def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_headers"):
        HttpLimits(max_headers=0)
    with pytest.raises(ValueError, match="header_timeout"):
        HttpLimits(header_timeout=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        HttpLimits(max_body_bytes=-1)


async def test_response_hop_by_hop_headers_are_not_relayed() -> None:
    async def leaky(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.start(
            200,
            [
                (b"Connection", b"close, X-Internal"),
                (b"X-Internal", b"secret"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Content-Length", b"2"),
                (b"X-Public", b"yes"),
            ],
        )
        await respond.send(b"ok")
        await respond.end()

    responses = parse_responses(await run_raw(request("/") + request("/again"), leaky))
    assert len(responses) == 1
    response = responses[0]
    assert response.header(b"x-internal") is None
    assert response.header(b"keep-alive") is None
    assert response.header(b"connection") == b"close"
    assert response.header(b"x-public") == b"yes"


async def test_handler_failing_after_the_response_started_closes_without_a_second_answer() -> None:
    async def half(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.start(200, [])
        await respond.send(b"partial")
        raise RuntimeError("origin went away")

    data = await run_raw(request("/") + request("/again"), half)
    assert data.count(b"HTTP/1.1 ") == 1
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n"), "a cut-off chunked body must not look complete"


async def test_encoded_slash_is_accepted_only_for_hosts_that_opt_in() -> None:
    def opted_in(host: str) -> bool:
        return host == "files.example.com"

    recorder = Recorder()
    allowed = request("/a%2Fb/%5C", host="files.example.com")
    responses = parse_responses(await run_raw(allowed, recorder, encoded_slash_allowed=opted_in))
    assert responses[0].status == 200
    assert recorder.requests[0].path == "/a%2Fb/%5C"
    refused = parse_responses(
        await run_raw(request("/a%2Fb"), Recorder(), encoded_slash_allowed=opted_in)
    )
    assert refused[0].status == 400


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"X-Padded:   a  b \t ", b"a  b"),
        (b"X-Tight:v", b"v"),
        (b"X-Empty: \t ", b""),
        (b"X-Tab:\tin\tside\t", b"in\tside"),
        (b"Cookie: CF_Authorization=" + b"e" * 4000 + b"   ", b"CF_Authorization=" + b"e" * 4000),
    ],
)
async def test_header_values_lose_their_surrounding_blanks_only(line: bytes, value: bytes) -> None:
    recorder = Recorder()
    raw = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n" + line + b"\r\n\r\n"
    responses = parse_responses(await run_raw(raw, recorder))
    assert len(responses) == 1
    name = line.split(b":", 1)[0].lower()
    seen = [v for n, v in recorder.requests[0].headers if n.lower() == name]
    assert seen == [value]
