"""Transport: one TCP or TLS socket with deadlines, where smtppool touches the network.

It dials (a name resolved within the connect deadline, each address tried in turn),
wraps TLS, writes and reads against deadlines, peeks at an idle socket, and translates
every low-level error into its :class:`SMTPError` at one boundary (:func:`translate`).
It knows nothing of SMTP: :class:`~smtppool.connection.SMTPConnection` feeds what it
reads to the sans-IO protocol.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .config import Options, make_ssl_context
from .errors import ConnectError, SMTPError, SMTPTimeoutError, TLSError

__all__ = ["READ_CHUNK_BYTES", "Transport", "remaining", "translate"]

#: Bytes asked of the socket per ``recv``.
READ_CHUNK_BYTES = 64 * 1024
#: A socket timeout up to this much longer than asked for is left as it is: resetting it
#: costs a system call per read, and a deadline this late by milliseconds is harmless.
TIMEOUT_SLACK = 0.005
#: On Linux a plaintext session's socket is left blocking and the kernel times out each
#: recv/send (SO_RCVTIMEO/SO_SNDTIMEO): CPython polls before every call on a socket that
#: has a Python timeout, one extra system call and GIL hand-off per read and per write.
#: TLS sockets keep Python timeouts (a blocking SSL read retries a kernel timeout forever).
KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    current = sock.gettimeout()  # no system call, unlike settimeout()
    if current is None or not seconds <= current <= seconds + TIMEOUT_SLACK:
        sock.settimeout(seconds)


def _set_kernel_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    # At least 1 µs: a zero timeval means "no timeout", which would block forever.
    micros = max(int((seconds - whole) * 1e6), 0 if whole else 1)
    value = struct.pack("ll", whole, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _try(call: Callable[[Any, int], Any], arg: Any, flags: int) -> Any:
    """One non-blocking send or recv: what it returned, or None when it would block."""
    try:
        return call(arg, flags)
    except _WOULD_BLOCK:
        return None


def _wait_ready(sock: socket.socket, timeout: float) -> bool:
    """Wait until ``sock`` can be written to or has something to read (or the timeout
    passes: the caller's deadline check says so); True when it has something to read."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLOUT)
        events = poller.poll(timeout * 1000)
        return any(event & (select.POLLIN | select.POLLERR | select.POLLHUP) for _, event in events)
    readable, _, _ = select.select([sock], [sock], [sock], timeout)
    return bool(readable)


def remaining(deadline: float, doing: str) -> float:
    """Seconds left before ``deadline``; past it, the timeout of ``doing``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise SMTPTimeoutError(f"timed out {doing}")
    return left


def translate(exc: OSError, doing: str, host: str) -> NoReturn:
    """The error boundary: re-raise a socket or TLS error as its SMTPError subclass.

    Called from plain ``except OSError`` clauses, which cost nothing until an error
    happens (a context manager per read and write was measurable)."""
    if isinstance(exc, SMTPError):
        raise exc
    # socket.timeout, or EAGAIN from a kernel timeout on a blocking socket
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        raise SMTPTimeoutError(f"timed out {doing}") from exc
    if isinstance(exc, socket.gaierror):
        raise ConnectError(f"cannot resolve {host!r}: {exc.strerror}", code="EDNS") from exc
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        raise TLSError(f"TLS failure {doing}: {exc}") from exc
    raise ConnectError(f"connection failure {doing}: {exc}") from exc


@functools.lru_cache(maxsize=1)
def local_fqdn() -> str:
    return socket.getfqdn()


class Transport:
    """The socket of one session, opened by :meth:`open` and gone after :meth:`close`."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.sock: socket.socket | None = None
        #: The kernel timeout armed on a blocking plaintext socket, or None while the
        #: socket uses Python timeouts (TLS, or a platform without kernel timeouts).
        self._kernel_timeout: float | None = None
        #: The addresses the last dial tried, in order (a name may resolve to several).
        self.addresses_tried: list[str] = []
        #: Set by abort(): the session was cut from another thread.
        self.aborted = False
        #: Bytes the kernel took from :meth:`write_reading` (a running count).
        self.bytes_sent = 0

    # -- opening -------------------------------------------------------------------------

    def open(self, deadline: float, given: socket.socket | None = None) -> None:
        """Take ``given``, or the socket ``get_socket`` makes, or dial."""
        sock = given
        if sock is None and self.options.get_socket is not None:
            sock = self.options.get_socket(self.options)
            if sock is not None and not isinstance(sock, socket.socket):
                raise TypeError("get_socket must return a connected socket.socket or None")
        self.sock = self._adopt(sock if sock is not None else self._dial(deadline))
        if self.aborted:  # abort() came while the socket was being opened
            raise ConnectError("connection aborted while connecting")

    def _dial(self, deadline: float) -> socket.socket:
        """Connect to each resolved address in turn until one answers."""
        opts = self.options
        last_error: OSError | None = None
        self.addresses_tried.clear()
        for family, kind, proto, _, address in self._resolve(deadline):
            ip, port = address[0], address[1]
            self.addresses_tried.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
            sock = socket.socket(family, kind, proto)
            try:
                if opts.local_address:
                    sock.bind((opts.local_address, 0))
                sock.settimeout(remaining(deadline, f"connecting to {opts.host}"))
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        assert last_error is not None
        raise last_error

    def _resolve(self, deadline: float) -> list[Any]:
        """``getaddrinfo`` bounded by the connect deadline (it has no timeout of its own)."""
        host, port = self.options.host, self.options.port
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # a literal address resolves without a lookup
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        outcome: list[Any] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=lookup, name="smtppool-resolve", daemon=True).start()
        if not done.wait(remaining(deadline, f"resolving {host}")):
            raise SMTPTimeoutError(f"timed out resolving {host}")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        result: list[Any] = outcome[0]
        return result

    def _adopt(self, sock: socket.socket) -> socket.socket:
        """Take a freshly opened socket; a plaintext one gets kernel timeouts where they work."""
        self._kernel_timeout = None
        if KERNEL_TIMEOUTS and not isinstance(sock, ssl.SSLSocket):  # get_socket may wrap
            try:
                _set_kernel_timeout(sock, self.options.socket_timeout)
                sock.settimeout(None)
                self._kernel_timeout = self.options.socket_timeout
            except OSError:  # not a socket that takes them: Python timeouts then
                pass
        return sock

    def start_tls(self, deadline: float) -> None:
        """Wrap the socket in TLS (the handshake within ``deadline``)."""
        sock = self.connected()
        self._kernel_timeout = None
        sock.settimeout(remaining(deadline, "in the TLS handshake"))
        context = make_ssl_context(self.options.tls)
        self.sock = context.wrap_socket(sock, server_hostname=self.options.server_hostname)

    # -- what it is ----------------------------------------------------------------------

    def connected(self) -> socket.socket:
        if self.sock is None:
            raise ConnectError("not connected (connect() first, or the connection was closed)")
        return self.sock

    @property
    def tls_version(self) -> str | None:
        sock = self.sock
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    @property
    def tls_cipher(self) -> str | None:
        sock = self.sock
        cipher = sock.cipher() if isinstance(sock, ssl.SSLSocket) else None
        return cipher[0] if cipher else None

    def on_loopback(self) -> bool:
        try:
            peer = self.connected().getpeername()
            return ipaddress.ip_address(peer[0]).is_loopback
        except (OSError, ValueError, TypeError, IndexError):
            return False

    def address_literal(self) -> str:
        """This end's address as an EHLO address literal (``[192.0.2.1]``)."""
        sock = self.connected()
        address = sock.getsockname()[0] if sock.family in (socket.AF_INET, socket.AF_INET6) else ""
        if not address:
            return "[127.0.0.1]"
        return f"[IPv6:{address}]" if ":" in address else f"[{address}]"

    # -- reading and writing -------------------------------------------------------------

    def _arm(self, sock: socket.socket, seconds: float) -> None:
        """Bound the next blocking call on ``sock`` by ``seconds``."""
        armed = self._kernel_timeout
        if armed is None:
            _set_timeout(sock, seconds)
        elif not seconds <= armed <= seconds + TIMEOUT_SLACK:
            _set_kernel_timeout(sock, seconds)
            self._kernel_timeout = seconds

    def write(self, data: bytes) -> None:
        """Send all of ``data`` within ``socket_timeout``, however slowly the peer reads."""
        sock = self.connected()
        timeout = self.options.socket_timeout
        try:
            self._arm(sock, timeout)
            if self._kernel_timeout is None:
                sock.sendall(data)  # the Python timeout bounds the whole call
                return
            deadline = time.monotonic() + timeout
            sent = sock.send(data)  # blocking: all of it, unless the kernel timed out
            while sent < len(data):  # a peer reading slowly gets what is left of the deadline
                self._arm(sock, remaining(deadline, "sending data"))
                sent += sock.send(memoryview(data)[sent:])
        except OSError as exc:
            translate(exc, "sending data", self.options.host)

    def write_reading(self, data: bytes, received: Callable[[bytes], None]) -> None:
        """Send all of ``data`` within ``socket_timeout``, handing what the server says
        meanwhile to ``received`` (``b""``: it hung up, and ConnectError is raised).

        A server may stop reading until its replies are read; a plain :meth:`write` would
        then wait for it while it waits for us, so a write that leaves replies unread
        behind it must read as it goes.  :attr:`bytes_sent` counts what the kernel took,
        so a caller knows, when the connection fails, which bytes never left.
        """
        sock = self.connected()
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        # A kernel-timed plaintext socket stays blocking and takes per-call flags; any
        # other socket (TLS takes no flags) is non-blocking for the length of the write.
        flags = 0 if self._kernel_timeout is None else _DONTWAIT
        view, deadline = memoryview(data), time.monotonic() + self.options.socket_timeout
        try:
            if not flags:
                sock.settimeout(0.0)
            while view:
                sent = _try(sock.send, view, flags)
                if sent:
                    self.bytes_sent += sent
                    view = view[sent:]
                    continue
                readable = _wait_ready(sock, remaining(deadline, "sending data"))
                if readable or (tls is not None and tls.pending()):
                    got = _try(sock.recv, READ_CHUNK_BYTES, flags)
                    if got is not None:
                        received(got)
                        if not got:
                            raise ConnectError("connection closed by the server while sending data")
        except OSError as exc:
            translate(exc, "sending data", self.options.host)
        finally:
            if not flags and self.sock is sock:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.options.socket_timeout)

    def receive(self, deadline: float, doing: str) -> bytes:
        """The next bytes from the server before ``deadline`` (``b""``: it closed)."""
        sock = self.connected()
        try:
            self._arm(sock, remaining(deadline, doing))
            return sock.recv(READ_CHUNK_BYTES)
        except OSError as exc:
            translate(exc, doing, self.options.host)

    def idle_data(self) -> bytes | None:
        """What arrived on the idle socket: None for nothing (or TLS housekeeping only,
        such as session tickets), else the bytes (``b""``: the server hung up)."""
        sock = self.connected()
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not buffered and not select.select([sock], [], [], 0)[0]:
            return None
        try:
            sock.setblocking(False)
            return sock.recv(READ_CHUNK_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None  # only TLS housekeeping was pending
        except OSError:
            return b""
        finally:
            with contextlib.suppress(OSError):
                timeout = None if self._kernel_timeout is not None else self.options.socket_timeout
                sock.settimeout(timeout)

    # -- ending --------------------------------------------------------------------------

    def abort(self) -> None:
        """Cut the socket from another thread: a blocked read or write returns at once."""
        self.aborted = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the plain socket's: SSLSocket's unwraps
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the socket at once; idempotent and never raises."""
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
