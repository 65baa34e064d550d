"""One-time PIN by e-mail: whoever can read the mailbox gets an identity for that address.

A code is short (6 digits by default), so everything around it is strict:

* only a keyed hash of the code is kept (HMAC-SHA256 with a key drawn at start-up, over the
  challenge id and the code), so a memory or state dump reveals no usable code;
* comparisons are constant-time; a challenge allows ``max_attempts`` wrong codes and is then
  locked for good; a right code works once; everything expires after ``lifetime`` seconds;
* at most ``max_sends_per_email_per_hour`` codes go to one address per hour, so the edge
  cannot be used to flood a mailbox;
* refusals carry distinct reasons (``unknown_challenge``, ``expired``, ``wrong_code``,
  ``locked``, ``used``, ``too_many_codes``, ``bad_email``) for the audit log, while the page
  a person sees stays generic enough not to help guessing.

Whether an address may log in at all is the policy's business, after the code: starting a
challenge looks the same for every address, so the login page leaks nothing about who is
allowed.

Senders: :class:`SmtpSender` for real mail, and :class:`LogSender` for development.
**LogSender writes each code to the log** (WARNING on the ``tunnelgate.otp`` logger): that is
the single place in tunnelgate where a secret is logged, on purpose, so a demo works without a
mail server. Never configure it on an edge that real people log in to.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import idna
import trio

from edge.access.identity import Identity
from edge.access.idp import IdpUnavailable, OtpRefused

logger = logging.getLogger(__name__)
code_logger = logging.getLogger("tunnelgate.otp")

__all__ = ["CodeSender", "LogSender", "OtpIssuer", "SmtpSender", "normalise_email"]

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]

MAX_EMAIL_LENGTH = 254
MAX_CHALLENGES = 50_000
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_HOUR = 3600.0


class CodeSender(Protocol):
    async def send_code(self, email: str, code: str, *, lifetime: float) -> None:
        """Deliver ``code`` to ``email``; raise IdpUnavailable("send_failed") when it cannot."""


def normalise_email(raw: str) -> str:
    """The address in the form identities carry (lower-case ASCII domain), or OtpRefused.

    Exactly one ``@``; an ASCII local part of ordinary characters; an internationalised
    domain is converted to its ``xn--`` form. Anything with whitespace or control characters
    is refused, which also keeps it out of mail headers.
    """
    text = raw.strip()
    if len(text) > MAX_EMAIL_LENGTH or text.count("@") != 1:
        raise OtpRefused("bad_email", http_status=400)
    local, domain = text.split("@")
    if not _LOCAL_PART.fullmatch(local) or local.startswith(".") or ".." in local:
        raise OtpRefused("bad_email", http_status=400)
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise OtpRefused("bad_email", http_status=400) from None
    if "." not in ascii_domain:
        raise OtpRefused("bad_email", http_status=400)
    return f"{local}@{ascii_domain.lower()}"


@dataclass(slots=True)
class _Challenge:
    email: str
    digest: bytes
    expires_at: float
    attempts_left: int
    used: bool = False


class OtpIssuer:
    """Issues and checks one-time codes; time, randomness and delivery are injected."""

    def __init__(
        self,
        clock: Clock,
        random_bytes: RandomBytes,
        sender: CodeSender,
        *,
        name: str = "otp",
        code_length: int = 6,
        lifetime: float = 600.0,
        max_attempts: int = 5,
        max_sends_per_email_per_hour: int = 5,
        max_challenges: int = MAX_CHALLENGES,
    ) -> None:
        if not 4 <= code_length <= 12:
            raise ValueError("code_length must be between 4 and 12 digits")
        self.name = name
        self._clock = clock
        self._random_bytes = random_bytes
        self._sender = sender
        self._code_length = code_length
        self.lifetime = lifetime
        self._max_attempts = max_attempts
        self._max_sends = max_sends_per_email_per_hour
        self._max_challenges = max_challenges
        self._key = random_bytes(32)
        self._challenges: dict[str, _Challenge] = {}
        self._sends: dict[str, list[float]] = {}

    def _digest(self, challenge_id: str, code: str) -> bytes:
        message = f"{challenge_id}:{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _new_code(self) -> str:
        """Uniform decimal digits: bytes >= 250 are rejected so no digit is more likely."""
        digits: list[str] = []
        while len(digits) < self._code_length:
            for byte in self._random_bytes(self._code_length * 2):
                if byte < 250 and len(digits) < self._code_length:
                    digits.append(str(byte % 10))
        return "".join(digits)

    def _check_send_rate(self, email: str, now: float) -> None:
        key = email.casefold()
        recent = [sent for sent in self._sends.get(key, ()) if now - sent < _HOUR]
        if len(recent) >= self._max_sends:
            self._sends[key] = recent
            raise OtpRefused("too_many_codes", http_status=429)
        recent.append(now)
        self._sends[key] = recent
        if len(self._sends) > self._max_challenges:
            stale = [k for k, times in self._sends.items() if now - max(times) >= _HOUR]
            for old in stale:
                del self._sends[old]

    def _make_room(self, now: float) -> None:
        if len(self._challenges) < self._max_challenges:
            return
        for key in [k for k, c in self._challenges.items() if now >= c.expires_at]:
            del self._challenges[key]
        while len(self._challenges) >= self._max_challenges:
            del self._challenges[next(iter(self._challenges))]

    async def start(self, email: str) -> str:
        """Send a fresh code to ``email``; returns the challenge id the code page carries."""
        address = normalise_email(email)
        now = self._clock()
        self._check_send_rate(address, now)
        self._make_room(now)
        challenge_id = self._random_bytes(32).hex()
        code = self._new_code()
        self._challenges[challenge_id] = _Challenge(
            email=address,
            digest=self._digest(challenge_id, code),
            expires_at=now + self.lifetime,
            attempts_left=self._max_attempts,
        )
        try:
            await self._sender.send_code(address, code, lifetime=self.lifetime)
        except BaseException:
            del self._challenges[challenge_id]
            raise
        logger.info("otp challenge %s started", challenge_id[:12])
        return challenge_id

    def email_of(self, challenge_id: str) -> str | None:
        """The address a live challenge sent its code to (for the code page)."""
        challenge = self._challenges.get(challenge_id)
        if challenge is None or self._clock() >= challenge.expires_at:
            return None
        return challenge.email

    def verify(self, challenge_id: str, code: str) -> Identity:
        """The identity of the address, if ``code`` is this challenge's code; else OtpRefused."""
        challenge = self._challenges.get(challenge_id)
        if challenge is None:
            raise OtpRefused("unknown_challenge")
        now = self._clock()
        if now >= challenge.expires_at:
            del self._challenges[challenge_id]
            raise OtpRefused("expired")
        if challenge.used:
            raise OtpRefused("used")
        if challenge.attempts_left <= 0:
            raise OtpRefused("locked", http_status=429)
        candidate = "".join(code.split())[:64]
        if not hmac.compare_digest(self._digest(challenge_id, candidate), challenge.digest):
            challenge.attempts_left -= 1
            logger.info(
                "otp challenge %s: wrong code, %d attempts left",
                challenge_id[:12],
                challenge.attempts_left,
            )
            if challenge.attempts_left <= 0:
                raise OtpRefused("locked", http_status=429)
            raise OtpRefused("wrong_code", f"{challenge.attempts_left} attempts left")
        challenge.used = True
        return Identity(
            sub=challenge.email,
            email=challenge.email,
            email_verified=True,
            name=challenge.email,
            groups=(),
            idp=self.name,
            amr=("otp",),
            issued_at=now,
        )

    def purge_expired(self) -> int:
        now = self._clock()
        expired = [key for key, c in self._challenges.items() if now >= c.expires_at]
        for key in expired:
            del self._challenges[key]
        return len(expired)


def _message(from_addr: str, email: str, code: str, lifetime: float) -> EmailMessage:
    message = EmailMessage()
    message["From"] = from_addr
    message["To"] = email
    message["Subject"] = "Your sign-in code"
    minutes = max(1, round(lifetime / 60))
    message.set_content(
        f"Your one-time sign-in code is:\n\n    {code}\n\n"
        f"It works once and expires in {minutes} minutes.\n"
        "If you did not just try to sign in, you can ignore this message.\n"
    )
    return message


class SmtpSender:
    """Sends codes through an SMTP server (blocking smtplib, run in a worker thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        from_addr: str,
        *,
        starttls: bool = False,
        username: str | None = None,
        password_file: Path | str | None = None,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if (username is None) != (password_file is None):
            raise ValueError("username and password_file go together")
        self.host = host
        self.port = port
        self.from_addr = from_addr
        self.starttls = starttls
        self.username = username
        self.password_file = Path(password_file) if password_file is not None else None
        self.timeout = timeout
        self._tls_context = tls_context

    def __repr__(self) -> str:
        return f"SmtpSender(host={self.host!r}, port={self.port}, starttls={self.starttls})"

    def _send_blocking(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=self._tls_context or ssl.create_default_context())
            if self.username is not None and self.password_file is not None:
                password = self.password_file.read_text().strip()
                smtp.login(self.username, password)
            smtp.send_message(message)

    async def send_code(self, email: str, code: str, *, lifetime: float) -> None:
        message = _message(self.from_addr, email, code, lifetime)
        try:
            await trio.to_thread.run_sync(self._send_blocking, message)
        except (smtplib.SMTPException, OSError) as error:
            logger.warning("otp mail to the SMTP server failed: %s", type(error).__name__)
            raise IdpUnavailable("send_failed", type(error).__name__) from None


class LogSender:
    """DEVELOPMENT ONLY: writes every code to the ``tunnelgate.otp`` log at WARNING.

    This is deliberately the one place a secret reaches a log, so ``make demo`` can print the
    code in the terminal. An edge serving real users must use :class:`SmtpSender`.
    """

    async def send_code(self, email: str, code: str, *, lifetime: float) -> None:
        code_logger.warning("one-time code for %s: %s", email, code)
