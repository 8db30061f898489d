"""A TCP proxy on 127.0.0.1 that can cut the network silently, for chaos tests.

``TcpProxy(host, port)`` forwards every connection made to ``proxy.port`` to ``host:port``.
``cut()`` stops forwarding in both directions without closing or resetting anything: bytes
already sent wait in the socket buffers, new connections wait in the listen backlog, and both
ends see a silent network (no FIN, no RST), as with a pulled cable or a partition. ``resume()``
forwards everything again, in order, with nothing lost. One thread runs all the sockets with a
selector::

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.cut()
        ...
        proxy.resume()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Any

__all__ = ["TcpProxy"]

_CHUNK = 65536
#: stop reading from a side while this much is waiting to be written to the other
_HIGH_WATER = 1 << 20


class _Side:
    """One socket of a forwarded connection and the bytes waiting to be written to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()
        self.peer: _Side | None = None
        self.events = 0  # what the selector watches now (0: not registered)
        self.closed = False


class TcpProxy:
    """Forwards connections from ``127.0.0.1:port`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._listening = False
        self._sides: list[_Side] = []
        self._cut = False
        self._closing = False
        #: connections accepted so far, and bytes forwarded (both directions)
        self.connections = 0
        self.bytes_forwarded = 0
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    # --- control -----------------------------------------------------------------------------
    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Stop forwarding (both directions, new connections too) without closing anything."""
        self._cut = True
        self._wake()

    def resume(self) -> None:
        """Forward again everything that waited, in order."""
        self._cut = False
        self._wake()

    def close(self) -> None:
        """Close every connection and the listener; stop the thread."""
        self._closing = True
        self._wake()
        self._thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "cut" if self._cut else "forwarding"
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]} {state}>"

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # --- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                self._update_interest()
                for key, mask in self._selector.select(timeout=1.0):
                    if key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.data == "listen":
                        self._accept()
                    else:
                        side: _Side = key.data
                        if mask & selectors.EVENT_READ and not side.closed:
                            self._read(side)
                        if mask & selectors.EVENT_WRITE and not side.closed:
                            self._write(side)
        finally:
            for side in list(self._sides):
                self._close_side(side)
            for sock in (self._listener, self._wake_r, self._wake_w):
                with contextlib.suppress(Exception):
                    sock.close()
            with contextlib.suppress(Exception):
                self._selector.close()

    def _update_interest(self) -> None:
        forwarding = not self._cut
        if forwarding != self._listening:
            if forwarding:
                self._selector.register(self._listener, selectors.EVENT_READ, "listen")
            else:
                self._selector.unregister(self._listener)
            self._listening = forwarding
        for side in self._sides:
            if side.closed:
                continue
            events = 0
            if forwarding:
                assert side.peer is not None
                if len(side.peer.out) < _HIGH_WATER:
                    events |= selectors.EVENT_READ
                if side.out:
                    events |= selectors.EVENT_WRITE
            if events == side.events:
                continue
            if side.events == 0:
                self._selector.register(side.sock, events, side)
            elif events == 0:
                self._selector.unregister(side.sock)
            else:
                self._selector.modify(side.sock, events, side)
            side.events = events

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()  # upstream down: the client sees its connection refused/closed
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        a, b = _Side(client), _Side(server)
        a.peer, b.peer = b, a
        self._sides += [a, b]
        self.connections += 1

    def _read(self, side: _Side) -> None:
        assert side.peer is not None
        try:
            data = side.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # this end closed (or reset): pass the rest on, then close both
            self._flush(side.peer)
            self._close_side(side)
            self._close_side(side.peer)
            return
        side.peer.out += data
        self.bytes_forwarded += len(data)
        self._write(side.peer)

    def _write(self, side: _Side) -> None:
        if not side.out or side.closed:
            return
        try:
            sent = side.sock.send(side.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            assert side.peer is not None
            self._close_side(side)
            self._close_side(side.peer)
            return
        del side.out[:sent]

    def _flush(self, side: _Side) -> None:
        """Best effort: write what waits for ``side`` before it is closed."""
        if side.closed or not side.out:
            return
        with contextlib.suppress(OSError):
            side.sock.setblocking(True)
            side.sock.settimeout(1.0)
            side.sock.sendall(side.out)
        side.out.clear()

    def _close_side(self, side: _Side) -> None:
        if side.closed:
            return
        side.closed = True
        if side.events:
            with contextlib.suppress(Exception):
                self._selector.unregister(side.sock)
            side.events = 0
        with contextlib.suppress(Exception):
            side.sock.close()
        with contextlib.suppress(ValueError):
            self._sides.remove(side)
