"""The journal: a crash-safe SQLite record of every evaluation of a search.

Each trial is written in its own transaction *before* the strategy is told,
so a search killed at any instant loses at most the evaluation in flight.
WAL mode with `synchronous=FULL` makes every committed trial survive a
process kill and a power cut; `durability="process"` (`synchronous=NORMAL`)
survives a process kill only and is faster on slow disks.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.result import Result
from core.api import Arch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    trial INTEGER PRIMARY KEY,
    arch_key TEXT NOT NULL,
    arch TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    metrics TEXT NOT NULL,
    cost REAL NOT NULL,
    cached INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    finished REAL NOT NULL
);
"""

_SYNC = {"full": "FULL", "process": "NORMAL"}


@dataclass(frozen=True)
class Trial:
    trial: int
    arch: Arch
    result: Result
    cached: bool
    fingerprint: str
    finished: float


class Journal:
    def __init__(self, path: str | Path, durability: str = "full"):
        if durability not in _SYNC:
            raise ValueError(f"journal durability must be one of {sorted(_SYNC)}, got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={_SYNC[durability]}")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta ------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- trials ------------------------------------------------------------------
    def record(self, arch: Arch, result: Result, fingerprint: str, cached: bool = False) -> int:
        """Append one trial in its own committed transaction; return its index."""
        trial = self._count
        self._db.execute(
            "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (trial, arch.key, arch.to_json(), result.status, result.reason,
             json.dumps(result.metrics, allow_nan=True), result.cost, int(cached), fingerprint, time.time()))
        self._count += 1
        return trial

    def trials(self) -> list[Trial]:
        rows = self._db.execute(
            "SELECT trial, arch, status, reason, metrics, cost, cached, fingerprint, finished FROM trials ORDER BY trial")
        return [Trial(t, Arch.from_json(a), Result(json.loads(m), s, r, c), bool(cd), fp, fin)
                for t, a, s, r, m, c, cd, fp, fin in rows]

    def evaluations(self) -> int:
        """Trials that really ran an evaluation (not answered from the cache)."""
        return self._db.execute("SELECT COUNT(*) FROM trials WHERE cached=0").fetchone()[0]
