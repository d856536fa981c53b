"""Local TCP ports for ``neutrino up``'s servers."""

from __future__ import annotations

import socket
from typing import Optional, Sequence

__all__ = ["port_is_free", "free_port"]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, preferred: Optional[int] = None, avoid: Sequence[int] = ()) -> int:
    """``preferred`` when it is free, else a port the kernel picks."""
    if preferred is not None and preferred not in avoid and port_is_free(host, preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port

