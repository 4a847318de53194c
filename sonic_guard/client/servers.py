"""Pick the server for the next job: most free GPU memory (from /sonic/health), else the shortest queue."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .api import ComfyClient
from .errors import ClientError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSnapshot:
    """What one server said just now. free_bytes is None on CPU servers and servers without the pack."""

    client: ComfyClient
    free_bytes: int | None
    queue_length: int
    status: str  # ok / degraded (the pack's health), or "no_pack" when /sonic/health is missing

    @property
    def url(self) -> str:
        return self.client.url


def snapshot_from_health(client: ComfyClient, health: dict[str, Any]) -> ServerSnapshot:
    gpu = health.get("gpu") or {}
    free = gpu.get("free_bytes") if isinstance(gpu, dict) else None
    return ServerSnapshot(client, int(free) if isinstance(free, (int, float)) else None,
                          int(health.get("queue_length") or 0), str(health.get("status", "?")))


def probe(client: ComfyClient, timeout_s: float = 5.0) -> ServerSnapshot | None:
    """The server's snapshot, or None when it does not answer."""
    try:
        health = client.health(timeout_s=timeout_s)
        if health is None:
            return ServerSnapshot(client, None, client.queue_length(timeout_s=timeout_s), "no_pack")
        return snapshot_from_health(client, health)
    except ClientError as err:
        logger.info("Skipped %s: %s", client.url, err.problem)
        return None


def probe_all(clients: Iterable[ComfyClient], timeout_s: float = 5.0) -> list[ServerSnapshot]:
    return [snap for snap in (probe(client, timeout_s) for client in clients) if snap is not None]


def rank(snapshots: Sequence[ServerSnapshot]) -> list[ServerSnapshot]:
    """Best first: servers with a GPU readout by free memory (most first), then the rest by queue length.

    Ties keep the order the servers were given in, so a list of equal servers is used front to back.
    """
    indexed = list(enumerate(snapshots))
    indexed.sort(key=lambda pair: (
        pair[1].free_bytes is None,
        -(pair[1].free_bytes or 0),
        pair[1].queue_length,
        pair[0],
    ))
    return [snap for _, snap in indexed]


def choose(snapshots: Sequence[ServerSnapshot], avoid: Iterable[str] = (),
           busy: Mapping[str, int] | None = None) -> ServerSnapshot | None:
    """The best server; None if none answered.

    Prefers servers not in `avoid` (URLs that just failed a run) and, when several jobs run at once, servers with
    fewer of this client's jobs in flight (`busy`: URL -> count) so parallel jobs spread out before they pile up.
    """
    avoided = set(avoid)
    counts = busy or {}
    ranked = rank(snapshots)
    preferred = [snap for snap in ranked if snap.url not in avoided] or ranked
    preferred.sort(key=lambda snap: counts.get(snap.url, 0))  # stable: keeps the rank among equals
    return preferred[0] if preferred else None
