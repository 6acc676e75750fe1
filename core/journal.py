"""The journal: a crash-safe SQLite record of every evaluation of a search.

Each trial is written in its own transaction *before* the strategy is told,
so a search killed at any instant loses at most the evaluations in flight.
The `asks` table records every arch the strategy proposed and how many
results had been told before it, so a resumed search replays the
interleaving of asks and tells exactly (`core.search`).
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
from core.space import Arch

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
CREATE TABLE IF NOT EXISTS asks (
    ask INTEGER PRIMARY KEY,
    call INTEGER NOT NULL,
    requested INTEGER NOT NULL,
    tells_before INTEGER NOT NULL,
    arch_key TEXT NOT NULL,
    arch TEXT NOT NULL,
    asked REAL NOT NULL
);
"""

_SYNC = {"full": "FULL", "process": "NORMAL"}


@dataclass(frozen=True)
class Ask:
    """One arch the strategy proposed: in call `call` of `strategy.ask(requested)`, made after
    `tells_before` results had been told. Asks without a trial were in flight when the search stopped."""

    ask: int
    call: int
    requested: int
    tells_before: int
    arch: Arch


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

    # -- asks (the interleaving of proposals and results, replayed on resume) ------------------------------
    def record_asks(self, call: int, requested: int, tells_before: int, archs: list[Arch]) -> None:
        """Append the archs of one `ask` call in one committed transaction.

        Committed without its own fsync: an ask needs to be durable only with the trial that answers
        it, and that trial's commit syncs the write-ahead log, this ask included. An ask lost to a
        power cut before any later commit is asked again by the replay, identically."""
        first = self._db.execute("SELECT COUNT(*) FROM asks").fetchone()[0]
        now = time.time()
        level = self._db.execute("PRAGMA synchronous").fetchone()[0]
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO asks VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [(first + i, call, requested, tells_before, a.key, a.to_json(), now)
                                      for i, a in enumerate(archs)])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            self._db.execute(f"PRAGMA synchronous={int(level)}")

    def asks(self) -> list[Ask]:
        rows = self._db.execute("SELECT ask, call, requested, tells_before, arch FROM asks ORDER BY ask")
        return [Ask(i, c, r, t, Arch.from_json(a)) for i, c, r, t, a in rows]

    def evaluations(self) -> int:
        """Trials that really ran an evaluation (not answered from the cache)."""
        return self._db.execute("SELECT COUNT(*) FROM trials WHERE cached=0").fetchone()[0]
