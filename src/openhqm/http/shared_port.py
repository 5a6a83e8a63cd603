"""The listening port's socket, bound here rather than by the HTTP server, and one port for several
serving processes (`server.processes`) through SO_REUSEPORT.

The supervisor binds the port first and never listens on it: that reserves the port (anything else's
plain bind then fails, as with one process) and turns port 0 into a real port its children can name.
Each child binds its own socket to that port with SO_REUSEPORT and listens only once its server starts,
after its lifespan, so a process still starting is given no connection; the kernel then spreads new
connections evenly over the listening sockets. A socket bound but not listening is given none.
A single process on granian (http/granian_server.py) binds its one socket here too, unshared.
"""

from __future__ import annotations

import socket

from openhqm.errors import ConfigError


def bound_socket(host: str, port: int, *, shared: bool) -> socket.socket:
    """A socket bound to (host, port), not listening; with `shared`, other processes of this user may
    bind it too. Unshared, it is the one socket of a single process (port 0 then reads back)."""
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None and shared:
        raise ConfigError("server.processes > 1 needs SO_REUSEPORT, which this platform lacks; use 1")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        if reuse_port is not None and shared:
            sock.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bound_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def base_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 host in brackets: what a log line tells clients to use."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
