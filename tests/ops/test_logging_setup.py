"""Log lines: key=value and JSON shapes, id fields, and secrets that never come out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel import logging_setup
from tunnel.logging_setup import (
    REDACTED,
    configure_logging,
    forget_secrets,
    redact,
    remember_secret,
    split_fields,
    with_ids,
)

SECRET = "s3cr3t-VALUE-9f8e7d"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
RUN_TOKEN = "eyJ0IjogIjZmMWMiLCAicyI6ICJhYmNkZWYifQ"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SECRET}",
        f"authorization=Bearer {SECRET}",
        f"headers=[['authorization', 'Bearer {SECRET}'], ['x-id', '1']]",
        f'headers=[["cookie", "CF_Authorization={SECRET}; theme=dark"]]',
        f"(b'set-cookie', b'session={SECRET}; Path=/')",
        f"Cookie: a=1; sid={SECRET}",
        f"CF-Access-Client-Secret: {SECRET}",
        f'{{"cf-access-client-secret": "{SECRET}"}}',
        f"cf_access_client_secret={SECRET} stream=5",
        f"Cf-Access-Jwt-Assertion: {SECRET}",
        f"client_secret={SECRET}&grant_type=authorization_code",
        f'{{"client_secret": "{SECRET}", "client_id": "app"}}',
        f'{{"tunnel_secret": "{SECRET}"}}',
        f"GET /callback?code=1&token={SECRET} HTTP/1.1",
        f"password: {SECRET}",
        f"the assertion was {SECRET.replace('s3cr3t', 'eyJhbGciOi')}",
    ],
)
def test_redact_removes_credentials_in_every_shape(text: str) -> None:
    cleaned = redact(text)
    assert SECRET not in cleaned
    assert REDACTED in cleaned


@pytest.mark.parametrize("token", [JWT, RUN_TOKEN])
def test_jwts_and_run_tokens_are_redacted_anywhere(token: str) -> None:
    cleaned = redact(f"presented {token} at the door")
    assert token not in cleaned
    assert cleaned == f"presented {REDACTED} at the door"


def test_ids_and_ordinary_words_survive_redaction() -> None:
    text = ("tunnel connection registered tunnel=6f1c connection=9a2e tokens=3 "
            "token_file=/etc/x secret_hashes=2 status=401")
    assert redact(text) == text


@pytest.fixture
def remembered() -> Iterator[None]:
    yield
    forget_secrets()


def test_remembered_secrets_are_redacted_in_any_context(remembered: None) -> None:
    remember_secret("plain-random-value-42")
    assert redact("odd context:plain-random-value-42!") == f"odd context:{REDACTED}!"
    remember_secret("short")  # too short to replace safely
    assert redact("a short word") == "a short word"


def test_split_fields_keeps_values_with_spaces_whole() -> None:
    text, fields = split_fields(
        "tunnel connection failed conn=0 edge=ws://127.0.0.1:1/ error=[Errno 111] refused"
    )
    assert text == "tunnel connection failed"
    assert fields == [("conn", "0"), ("edge", "ws://127.0.0.1:1/"),
                      ("error", "[Errno 111] refused")]
    assert split_fields("stream 5: origin failure") == ("stream 5: origin failure", [])


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    yield stream, logging.getLogger("tunnelgate.test")
    root.handlers[:], level = saved
    root.setLevel(level)


def test_text_format_is_one_key_value_line_with_id_fields(
    captured: tuple[io.StringIO, logging.Logger]
) -> None:
    stream, log = captured
    configure_logging("info", "text", stream=stream)
    log.info("tunnel connection registered tunnel=%s connection=%s", "t1", "c 2")
    with_ids(log, tunnel="t1", app="grafana").warning("origin slow stream=%d", 7)
    log.debug("not shown")
    first, second = stream.getvalue().splitlines()
    assert first.startswith("time=")
    assert ' level=info logger=tunnelgate.test msg="tunnel connection registered" ' in first
    assert first.endswith(' tunnel=t1 connection="c 2"')
    assert second.endswith('level=warning logger=tunnelgate.test msg="origin slow" '
                           "tunnel=t1 app=grafana stream=7")


def test_json_format_lifts_ids_into_fields(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    configure_logging("debug", "json", stream=stream)
    with_ids(log, connection="c9").info("stream reset stream=%d code=%s", 3, "CANCEL")
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "info"
    assert entry["logger"] == "tunnelgate.test"
    assert entry["msg"] == "stream reset"
    assert (entry["connection"], entry["stream"], entry["code"]) == ("c9", "3", "CANCEL")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_in_messages_and_tracebacks_never_reach_the_stream(
    captured: tuple[io.StringIO, logging.Logger], log_format: str
) -> None:
    stream, log = captured
    configure_logging("debug", log_format, stream=stream)
    log.info("request headers=%s", [["authorization", f"Bearer {SECRET}"]])
    try:
        raise ValueError(f"bad client_secret={SECRET}")
    except ValueError:
        log.exception("token exchange failed app=%s", "grafana")
    output = stream.getvalue()
    assert SECRET not in output
    assert "token exchange failed" in output
    assert "ValueError" in output


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("info", "xml", stream=io.StringIO())


def test_messages_not_ending_in_pairs_stay_whole() -> None:
    label = "tunnel=t1 connection=c1"
    message = f"{label} ending: {label}: closed"
    assert split_fields(message) == (message, [])
    assert split_fields("conn=0 edge=x: draining") == ("conn=0 edge=x: draining", [])


def _redact_without_fast_path(text: str) -> str:
    for pattern, replacement in logging_setup._PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_FRAGMENTS = st.sampled_from([
    "Authorization", "proxy-authorization", "COOKIE", "Set-Cookie", "cf_access_client_secret",
    "Cf-Access-Jwt-Assertion", "X-Tunnelgate-Run-Token", "token", "service_token", "Password",
    "passwd", "api_key", "ApiKey", "code_verifier", "CF_Authorization", "cf_app_session",
    "Bearer", "basic", "eyJ", "EYJ", "secret", "client_secret", ":", "=", " ", "\"", "'", ",",
    "&", ";", "_", "-", "abc123", "value", "{", "}", "[", "]", "\n", "\u0130", "\u00e9",
    "\u212a", "x", "9", "access_token", "id_token", "run_token", "tunnel_secret",
])


@settings(max_examples=1000)
@given(st.lists(_FRAGMENTS | st.text(max_size=6), max_size=14).map("".join))
def test_the_fast_path_never_changes_what_redaction_removes(text: str) -> None:
    assert redact(text) == _redact_without_fast_path(text)


def test_lines_without_credentials_skip_the_patterns_unchanged() -> None:
    line = '{"app":"bench","service_token":null,"path":"/small","action":"allow"}'
    assert redact(line) == line
    assert redact(line + " token=abc123") == line + f" token={REDACTED}"
