"""The tunnel between edge and connector.

``tunnel.protocol`` is the sans-IO wire protocol; ``tunnel.transport``,
``tunnel.session`` and ``tunnel.streams`` drive it over a WebSocket with trio;
``tunnel.auth`` mints and checks tunnel credentials. This package module imports
none of them, so ``import tunnel.protocol`` stays free of I/O libraries.
"""
