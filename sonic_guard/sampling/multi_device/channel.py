"""The parent <-> worker connection's wire format: torch.save bytes over an authenticated loopback socket.

Read back with `weights_only=True` (tensors, numbers, strings, lists, dicts, tuples only), so even a forged
message could not run code. Connection.send is not used: it pickles tensors with torch's fd-sharing reducers,
which need a multiprocessing parent.
"""

from __future__ import annotations

import io
from multiprocessing.connection import Connection
from typing import Any

import torch

AUTHKEY_ENV = "SONIC_GUARD_RANK_AUTHKEY"  # the connection's key travels in the environment, not the command line


def send_plain(connection: Connection, value: Any) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    connection.send_bytes(buffer.getvalue())


def receive_plain(connection: Connection) -> Any:
    return torch.load(io.BytesIO(connection.recv_bytes()), weights_only=True)
