"""A bounded SQLite history of runs: settings, hardware, predicted and measured peaks, stage times.

It calibrates the allocator overhead (`AllocatorCalibration`) and the time model (`TimeModel`). Every call opens
its own connection, so threads and processes may share one file; writes take SQLite's lock (WAL journal).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from .fitted_corrections import AllocatorCalibration, TimeModel
from .report import RunReport

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_RUNS = 1000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    device TEXT NOT NULL,
    width INTEGER, height INTEGER, steps INTEGER, cfg_batch INTEGER,
    predicted_peak INTEGER, raw_predicted INTEGER, measured_peak INTEGER, free_before INTEGER,
    retries INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL,
    unet_calls INTEGER, unet_pixel_frames INTEGER, unet_seconds REAL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_device ON runs (device, id);
"""


class RunHistory:
    """Runs recorded at `path` (the caller picks it, e.g. ComfyUI's user directory); keeps the last `max_runs`."""

    def __init__(self, path: str | Path, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs}")
        self.path = Path(path)
        self.max_runs = max_runs
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                logger.warning("run history %s has schema %d, newer than %d; using the common columns",
                               self.path, version, SCHEMA_VERSION)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30.0, isolation_level=None)) as conn:
            yield conn

    def record(self, report: RunReport) -> int:
        """Store one run and trim the oldest beyond `max_runs`; returns the new row id."""
        plan = report.plan
        device = str(report.hardware.get("device_name") or report.hardware.get("device") or "unknown")
        unet_seconds = report.stage_seconds.get("unet")
        row = (
            time.time(), device, plan.get("width"), plan.get("height"), plan.get("inference_steps"),
            plan.get("cfg_batch"), report.predicted_peak_bytes, report.raw_predicted_bytes,
            report.measured_peak_bytes, report.free_before_bytes, report.retries, report.outcome,
            report.unet_calls or None, report.unet_pixel_frames or None, unet_seconds,
            json.dumps(report.to_dict(), sort_keys=True),
        )
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO runs (created_at, device, width, height, steps, cfg_batch, predicted_peak, "
                    "raw_predicted, measured_peak, free_before, retries, outcome, unet_calls, unet_pixel_frames, "
                    "unet_seconds, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                row_id = int(cursor.lastrowid or 0)
                conn.execute("DELETE FROM runs WHERE id <= ?", (row_id - self.max_runs,))
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
        return row_id

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def recent(self, n: int = 20) -> list[RunReport]:
        """The last `n` runs, newest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT report FROM runs ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        return [RunReport.from_dict(json.loads(text)) for (text,) in rows]

    def calibration(self, device: str | None = None) -> AllocatorCalibration:
        """Allocator overhead fitted from calibration windows (`memory.calibrate`) on `device`: the activations
        (simulated peak minus its weights) against the least memory the window needed beyond those weights.

        Ordinary runs are recorded but not fitted: their reserved peak is what the allocator kept, not what the run
        needed (with memory to spare PyTorch's caching allocator holds 1.3-1.7x the tensor peak on an H100)."""
        query = ("SELECT raw_predicted, measured_peak, report FROM runs "
                 "WHERE raw_predicted > 0 AND measured_peak > 0 AND outcome = 'calibration'")
        with self._connect() as conn:
            rows = conn.execute(*self._for_device(query, device)).fetchall()
        samples = []
        for raw, measured, report in rows:
            weights = int(json.loads(report).get("raw_weight_bytes") or 0)  # 0 in rows from older versions
            samples.append((int(raw) - weights, int(measured) - weights))
        return AllocatorCalibration.fit(samples)

    def time_model(self, device: str | None = None) -> TimeModel:
        """UNet seconds per call fitted from runs that recorded UNet time and call shapes (on `device`)."""
        query = ("SELECT unet_pixel_frames, unet_seconds, unet_calls FROM runs "
                 "WHERE unet_pixel_frames > 0 AND unet_seconds > 0 AND unet_calls > 0")
        with self._connect() as conn:
            rows = conn.execute(*self._for_device(query, device)).fetchall()
        return TimeModel.fit([(int(px), float(sec) / int(calls)) for px, sec, calls in rows])

    @staticmethod
    def _for_device(query: str, device: str | None) -> tuple[str, tuple[str, ...]]:
        if device is None:
            return query, ()
        return query + " AND device = ?", (device,)
