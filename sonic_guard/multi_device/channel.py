"""The parent <-> worker connection's wire format (plain pickle over an authenticated loopback socket)."""

from __future__ import annotations

import pickle
from multiprocessing.connection import Connection
from typing import Any

AUTHKEY_ENV = "SONIC_GUARD_RANK_AUTHKEY"  # the connection's key travels in the environment, not the command line


def send_plain(connection: Connection, value: Any) -> None:
    """Plain pickle: Connection.send would use torch's fd-sharing reducers, which need a multiprocessing parent."""
    connection.send_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def receive_plain(connection: Connection) -> Any:
    return pickle.loads(connection.recv_bytes())  # noqa: S301 - our own worker, authenticated connection
