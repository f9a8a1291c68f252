"""A free TCP port on the loopback interface, for rendezvous, servers and databases started
here (the port is free when returned; whoever binds it next gets it)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
