"""Ports the service listens on: taken before anything starts, refused in one line."""

from __future__ import annotations

import errno
import socket


class StartupError(RuntimeError):
    """The service cannot start; the message is one line that says what to change."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_socket(host: str, port: int, what: str, remedy: str) -> socket.socket:
    """A listening TCP socket on host:port, or StartupError saying `remedy`.

    SO_REUSEADDR as servers set it (a port in TIME_WAIT after a restart is free); a port
    someone listens on is still refused.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(refusal(host, port, what, remedy, exc)) from exc
    return sock


def ensure_free(host: str, port: int, what: str, remedy: str) -> None:
    """StartupError unless host:port could be listened on now (checked by binding, so
    that nothing listening there sees a connection)."""
    listen_socket(host, port, what, remedy).close()


def refusal(host: str, port: int, what: str, remedy: str, exc: OSError) -> str:
    """The one line saying why `what` cannot listen on host:port, then what to do."""
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is in use"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "no such address on this machine"
    else:
        reason = exc.strerror or str(exc)
    return f"{what} cannot listen on {host}:{port}: {reason}; {remedy}"
