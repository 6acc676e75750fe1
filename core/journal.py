"""The journal: a crash-safe SQLite record of every evaluation of a search.

Each trial is written in its own transaction *before* the strategy is told,
so a search killed at any instant loses at most the evaluations in flight.
The `asks` table records every arch the strategy proposed and how many
results had been told before it, so a resumed search replays the
interleaving of asks and tells exactly (`core.search`).
WAL mode with `synchronous=FULL` makes every committed trial survive a
process kill and a power cut; `durability="process"` (`synchronous=NORMAL`)
survives a process kill only and is faster on slow disks.

One process at a time: the journal takes an exclusive lock (`flock` on
`<journal>.lock`, released by the OS when the process exits or dies), so a
second `archforge search --resume` on the same run folder stops at once
instead of evaluating the same trials twice. A journal that SQLite cannot
read (cut short, overwritten, a damaged page) raises `JournalError` naming
the file and what to do, and so does an empty or missing journal opened with
`must_exist=True` (what `--resume` asks for).
"""

from __future__ import annotations

import json
import os
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


class JournalError(RuntimeError):
    """A journal that cannot be used: damaged, empty where one was expected, or locked by another process."""


class RunLock:
    """An exclusive, non-blocking `flock` on `path` (created if needed), holding this process's pid.

    Raises `JournalError` naming the holder's pid when another process has it. The OS drops the lock when
    the file is closed or the process ends, however it ends. Where `fcntl` is missing (Windows) nothing is
    locked.
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(f"{what} is in use by another archforge process (pid {holder}); two processes on "
                               f"one run folder would evaluate the same trials twice: wait for it to finish or "
                               f"stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
    def __init__(self, path: str | Path, durability: str = "full", must_exist: bool = False):
        if durability not in _SYNC:
            raise ValueError(f"journal durability must be one of {sorted(_SYNC)}, got {durability!r}")
        self.path = Path(path)
        if must_exist and not self.path.is_file():
            raise JournalError(f"{self.path}: no journal to resume from; start without --resume")
        if must_exist and self.path.stat().st_size == 0:
            raise JournalError(f"{self.path}: the journal is empty (0 bytes), so this run recorded no trial; "
                               "start a new run without --resume")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.path.with_name(self.path.name + ".lock"), str(self.path))
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            if existed:
                problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError(problems[0])
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={_SYNC[durability]}")
            self._db.executescript(_SCHEMA)
            self._count = self._db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        except sqlite3.DatabaseError as err:
            self._lock.release()
            raise self._damaged(err) from None

    def _damaged(self, err: Exception) -> JournalError:
        return JournalError(f"{self.path}: the journal is damaged ({str(err).splitlines()[0]}); its trials cannot "
                            "be replayed: move it away and start a new run (without --resume)")

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()
        self._lock.release()

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
        try:
            rows = self._db.execute("SELECT trial, arch, status, reason, metrics, cost, cached, fingerprint, finished "
                                    "FROM trials ORDER BY trial").fetchall()
            return [Trial(t, Arch.from_json(a), Result(json.loads(m), s, r, c), bool(cd), fp, fin)
                    for t, a, s, r, m, c, cd, fp, fin in rows]
        except (sqlite3.DatabaseError, ValueError, TypeError) as err:
            raise self._damaged(err) from None

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
