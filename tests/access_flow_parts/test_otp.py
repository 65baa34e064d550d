"""One-time PIN: codes arrive by real SMTP, and are single use, attempt-limited and short-lived."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from edge.access.idp import IdpUnavailable, OtpRefused
from edge.access.idp.otp import LogSender, OtpIssuer, SmtpSender, normalise_email

from .doubles import CountingRandom, SteppedClock


class Mailbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpSink:
    """A real SMTP server on 127.0.0.1, port chosen by the kernel, on its own event loop thread.

    The socket is bound and listening before the thread starts, so a client can connect at
    once: the kernel queues the connection until the server accepts it.
    """

    def __init__(
        self,
        *,
        require_login: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.mailbox = Mailbox()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._require_login = require_login
        self._tls_context = tls_context
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            pair = (data.login.decode(), data.password.decode())
            self.mailbox.logins.append(pair)
            return AuthResult(success=pair == self._require_login, handled=False)
        return AuthResult(success=False, handled=False)

    def _factory(self) -> SMTP:
        if self._require_login is None:
            return SMTP(self.mailbox, hostname="sink.test")
        return SMTP(
            self.mailbox,
            hostname="sink.test",
            authenticator=self._authenticator,
            auth_required=True,
            tls_context=self._tls_context,
            require_starttls=True,
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            self._loop.create_server(self._factory, sock=self._sock)
        )
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


def issuer(sink: SmtpSink, clock: SteppedClock, **kwargs: Any) -> OtpIssuer:
    sender = SmtpSender("127.0.0.1", sink.port, "access@edge.example")
    return OtpIssuer(clock, CountingRandom(), sender, **kwargs)


def code_in(message: Message) -> str:
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    match = re.search(rb"\b(\d{6})\b", body)
    assert match, body
    return match.group(1).decode()


def refusal(otp: OtpIssuer, challenge_id: str, code: str) -> OtpRefused:
    with pytest.raises(OtpRefused) as caught:
        otp.verify(challenge_id, code)
    return caught.value


async def test_code_arrives_by_mail_and_signs_the_person_in(
    sink: SmtpSink, clock: SteppedClock
) -> None:
    otp = issuer(sink, clock)
    challenge = await otp.start("Alice@Corp.COM")
    [message] = sink.mailbox.messages
    assert message["To"] == "Alice@corp.com"
    assert message["From"] == "access@edge.example"
    assert sink.mailbox.envelopes == [("access@edge.example", ["Alice@corp.com"])]
    assert otp.email_of(challenge) == "Alice@corp.com"
    identity = otp.verify(challenge, code_in(message))
    assert identity.email == "Alice@corp.com"
    assert identity.email_verified
    assert identity.idp == "otp"
    assert identity.amr == ("otp",)


async def test_code_is_single_use(sink: SmtpSink, clock: SteppedClock) -> None:
    otp = issuer(sink, clock)
    challenge = await otp.start("bob@corp.com")
    code = code_in(sink.mailbox.messages[0])
    otp.verify(challenge, code)
    assert refusal(otp, challenge, code).reason == "used"


async def test_wrong_codes_exhaust_the_attempts_then_lock(
    sink: SmtpSink, clock: SteppedClock
) -> None:
    otp = issuer(sink, clock, max_attempts=3)
    challenge = await otp.start("bob@corp.com")
    right = code_in(sink.mailbox.messages[0])
    wrong = "000000" if right != "000000" else "111111"
    first = refusal(otp, challenge, wrong)
    assert (first.reason, first.http_status) == ("wrong_code", 401)
    assert refusal(otp, challenge, "not digits").reason == "wrong_code"
    last = refusal(otp, challenge, wrong)
    assert (last.reason, last.http_status) == ("locked", 429)
    assert refusal(otp, challenge, right).reason == "locked"


async def test_codes_expire(sink: SmtpSink, clock: SteppedClock) -> None:
    otp = issuer(sink, clock, lifetime=600)
    challenge = await otp.start("bob@corp.com")
    clock.advance(600)
    assert otp.email_of(challenge) is None
    assert refusal(otp, challenge, code_in(sink.mailbox.messages[0])).reason == "expired"
    assert refusal(otp, challenge, "123456").reason == "unknown_challenge"


async def test_a_code_only_opens_its_own_challenge(sink: SmtpSink, clock: SteppedClock) -> None:
    otp = issuer(sink, clock)
    await otp.start("a@corp.com")
    second = await otp.start("b@corp.com")
    first_code = code_in(sink.mailbox.messages[0])
    second_code = code_in(sink.mailbox.messages[1])
    if first_code != second_code:
        assert refusal(otp, second, first_code).reason == "wrong_code"
    assert otp.verify(second, second_code).email == "b@corp.com"
    assert refusal(otp, "no-such-challenge", first_code).reason == "unknown_challenge"


async def test_sends_per_address_are_rate_limited(sink: SmtpSink, clock: SteppedClock) -> None:
    otp = issuer(sink, clock, max_sends_per_email_per_hour=2)
    await otp.start("bob@corp.com")
    await otp.start("BOB@corp.com")
    with pytest.raises(OtpRefused) as caught:
        await otp.start("bob@corp.com")
    assert (caught.value.reason, caught.value.http_status) == ("too_many_codes", 429)
    await otp.start("carol@corp.com")
    clock.advance(3600)
    await otp.start("bob@corp.com")
    assert len(sink.mailbox.messages) == 4


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign",
        "a@b@corp.com",
        "a@corp.com\r\nBcc: victim@evil.com",
        "a b@corp.com",
        "a@localhost",
        "..a@corp.com",
        "a@" + "x" * 260 + ".com",
        "\u00e9@corp.com",
        "a@corp..com",
    ],
)
async def test_malformed_addresses_are_refused_before_any_mail(
    sink: SmtpSink, clock: SteppedClock, email: str
) -> None:
    otp = issuer(sink, clock)
    with pytest.raises(OtpRefused) as caught:
        await otp.start(email)
    assert (caught.value.reason, caught.value.http_status) == ("bad_email", 400)
    assert sink.mailbox.messages == []


def test_internationalised_domains_become_ascii() -> None:
    assert normalise_email(" user@B\u00fccher.Example ") == "user@xn--bcher-kva.example"


async def test_unreachable_smtp_server_fails_the_start(clock: SteppedClock) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: the connection is refused
    otp = OtpIssuer(clock, CountingRandom(), SmtpSender("127.0.0.1", port, "a@edge.example"))
    with pytest.raises(IdpUnavailable) as caught:
        await otp.start("bob@corp.com")
    assert caught.value.reason == "send_failed"
    assert caught.value.http_status == 502


async def test_starttls_and_login_with_the_password_file(
    clock: SteppedClock, tmp_path: Path
) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    server = SmtpSink(require_login=("mailer", "pa55word"), tls_context=server_context)
    server.start()
    try:
        password_file = tmp_path / "smtp.secret"
        password_file.write_text("pa55word\n")
        sender = SmtpSender(
            "127.0.0.1",
            server.port,
            "a@edge.example",
            starttls=True,
            username="mailer",
            password_file=password_file,
            tls_context=client_context,
        )
        otp = OtpIssuer(clock, CountingRandom(), sender)
        await otp.start("bob@corp.com")
        password_file.write_text("wrong\n")
        with pytest.raises(IdpUnavailable, match="send_failed"):
            await otp.start("carol@corp.com")
    finally:
        server.stop()
    # smtplib tries each mechanism the server offers before giving up on a wrong password.
    assert server.mailbox.logins[0] == ("mailer", "pa55word")
    assert set(server.mailbox.logins[1:]) == {("mailer", "wrong")}
    assert len(server.mailbox.messages) == 1


async def test_codes_are_uniform_digits_of_the_configured_length(clock: SteppedClock) -> None:
    class Collect:
        def __init__(self) -> None:
            self.codes: list[str] = []

        async def send_code(self, email: str, code: str, *, lifetime: float) -> None:
            self.codes.append(code)

    collect = Collect()
    otp = OtpIssuer(
        clock, CountingRandom(), collect, code_length=8, max_sends_per_email_per_hour=999
    )
    for index in range(300):
        await otp.start(f"user{index}@corp.com")
    assert all(re.fullmatch(r"\d{8}", code) for code in collect.codes)
    digits = "".join(collect.codes)
    assert set(digits) == set("0123456789")
    assert len(set(collect.codes)) == len(collect.codes)


async def test_log_sender_prints_the_code_on_the_otp_logger(
    clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    otp = OtpIssuer(clock, CountingRandom(), LogSender())
    with caplog.at_level(logging.WARNING, logger="tunnelgate.otp"):
        challenge = await otp.start("dev@corp.com")
    [record] = [r for r in caplog.records if r.name == "tunnelgate.otp"]
    assert record.levelno == logging.WARNING
    match = re.fullmatch(r"one-time code for dev@corp\.com: (\d{6})", record.getMessage())
    assert match
    assert otp.verify(challenge, match.group(1)).email == "dev@corp.com"


async def test_failed_send_leaves_no_challenge(clock: SteppedClock) -> None:
    class Broken:
        async def send_code(self, email: str, code: str, *, lifetime: float) -> None:
            raise IdpUnavailable("send_failed")

    otp = OtpIssuer(clock, CountingRandom(), Broken())
    with pytest.raises(IdpUnavailable):
        await otp.start("bob@corp.com")
    assert otp.purge_expired() == 0
    clock.advance(601)
    assert otp.purge_expired() == 0
