"""Shared test helpers: free loopback ports, the venv's commands."""

import socket
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in socks:
        sock.close()
    return ports


@pytest.fixture
def fedunlearn_cmd() -> list[str]:
    """The installed console command of this interpreter's venv."""
    return [str(BIN / "fedunlearn")]
