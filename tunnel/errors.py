"""Exceptions of the tunnel driver (transport, session, streams, credentials).

::

    TunnelError
     ├── TransportError                  the WebSocket layer failed
     │    ├── TransportClosed            the peer closed the WebSocket (or the socket)
     │    ├── HandshakeError             the upgrade could not complete (bad request, too big)
     │    │    ├── HandshakeRefused      client side: the server answered non-101 (status_code, body)
     │    │    └── HandshakeRejected     server side: ``authorize`` refused (status_code)
     │    └── MessageTooLarge            a WebSocket message beyond max_message_size
     ├── RegistrationRefused             the edge refused the connector (code, message, permanent)
     ├── SessionDraining                 no new streams: GOAWAY was sent or received
     ├── SessionClosed (also trio.BrokenResourceError)   the session is over (code, by_peer)
     │    ├── ConnectionLost             the transport ended under open streams
     │    ├── HeartbeatTimeout           nothing heard from the peer within heartbeat_timeout
     │    └── ProtocolViolation          a protocol error, detected here or reported by GOAWAY
     ├── StreamReset (also trio.BrokenResourceError)     the stream was reset (code, by_peer)
     └── InvalidRunToken                 a run token that does not decode

Session and stream failures subclass ``trio.BrokenResourceError`` so code written
against ``trio.abc.Stream`` handles them without knowing about tunnels. Every class
carries the hint its callers act on: an HTTP status, a reset code, or ``permanent``.
"""

from __future__ import annotations

import trio

from .protocol import ErrorCode


class TunnelError(Exception):
    """Base of every driver-level tunnel error."""


class TransportError(TunnelError):
    pass


class TransportClosed(TransportError):
    """The WebSocket closed; ``code`` is its close code (1006 when the socket just ended)."""

    def __init__(self, message: str, code: int = 1006) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(TransportError):
    """The upgrade failed before a WebSocket existed; ``status_code`` is what was answered."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class HandshakeRefused(HandshakeError):
    """The server answered the upgrade with a non-101 status (401: bad credentials)."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(
            f"the server refused the WebSocket upgrade with {status_code}", status_code
        )
        self.body = body

    @property
    def permanent(self) -> bool:
        """401/403/404 will not change by retrying; 5xx and 429 may."""
        return self.status_code in (401, 403, 404)


class HandshakeRejected(HandshakeError):
    """This server refused the upgrade (the response is already sent)."""


class MessageTooLarge(TransportError):
    pass


class RegistrationRefused(TunnelError):
    """The edge refused this connection; ``permanent`` means reconnecting cannot help."""

    def __init__(self, code: str, message: str, permanent: bool) -> None:
        super().__init__(f"registration refused ({code}): {message}")
        self.code = code
        self.message = message
        self.permanent = permanent


class SessionDraining(TunnelError):
    """The session accepts no new streams; open the stream on another connection."""


class SessionClosed(TunnelError, trio.BrokenResourceError):
    """The session ended; ``code`` is the protocol code involved (NO_ERROR for a clean end)."""

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.NO_ERROR, by_peer: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.by_peer = by_peer

    def clone(self) -> SessionClosed:
        """A fresh instance to raise again, so tracebacks do not pile up on one object."""
        return type(self)(self.message, code=self.code, by_peer=self.by_peer)


class ConnectionLost(SessionClosed):
    pass


class HeartbeatTimeout(SessionClosed):
    pass


class ProtocolViolation(SessionClosed):
    pass


class StreamReset(TunnelError, trio.BrokenResourceError):
    """The stream was reset; ``code`` says why (ORIGIN_UNREACHABLE -> 502, ...)."""

    def __init__(self, code: ErrorCode, *, by_peer: bool = True) -> None:
        side = "peer" if by_peer else "protocol"
        super().__init__(f"stream reset by {side}: {code.name}")
        self.code = code
        self.by_peer = by_peer


class InvalidRunToken(TunnelError):
    """The run token is not base64url JSON with a tunnel id and secret."""


class StreamLimitReached(TunnelError):
    """The peer's max_concurrent_streams is reached; open the stream on another connection."""
