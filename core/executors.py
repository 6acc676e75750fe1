"""Where evaluations run: `serial` (this process), `process` (a local pool of worker processes) or `ray`.

Every executor speaks one protocol, driven by `core.search.Search`:
`start(evaluator, timeout_s)`, `submit(key, arch)`, `wait() -> [(key, Result), ...]`
(at least one finished evaluation, in completion order) and `close()`.
`workers` is how many evaluations run at once. The driver alone writes the
journal: workers only evaluate and send a `Result` back.

A candidate never stops the search: an exception inside the evaluator, a
worker process that dies (killed, out of host memory), a Ray node that is
lost, or an evaluation that runs past `timeout_s` all come back as a failed
`Result` whose reason says what happened; the pool replaces the dead worker.

Workers receive the evaluator once, pickled (`process`: standard pickle, so
the evaluator and everything it holds must be importable by name; `ray`:
cloudpickle through the object store). Evaluators hold a space, the data and
a recipe, all picklable; a `FunctionEvaluator` needs a module-level function.
Work an evaluator would otherwise repeat in every worker (training the
compression evaluator's teacher) is done once in the driver first, by its
`prepare()` method when it has one.

- `process`: `multiprocessing` with the spawn start method (a fresh
  interpreter per worker, safe with CUDA and threads); each worker runs with
  `threads` torch threads (default 1; `OMP_NUM_THREADS` is set to match) and,
  with `num_gpus` per trial, sees only its own GPUs through
  `CUDA_VISIBLE_DEVICES` (fractions share a GPU: 0.5 puts two workers on
  each). A worker exits when the driver dies (Linux: `PR_SET_PDEATHSIG`).
- `ray` (the `dist` extra, `pip install "archforge[dist]"`): one Ray task per
  evaluation with `num_cpus`/`num_gpus` resources, so Ray places trials on
  the nodes and GPUs of a cluster; `address` (`auto`, `host:port` or
  `ray://host:10001`) joins a running cluster, `RAY_ADDRESS` is honoured, and
  with neither a local Ray instance is started and stopped with the search.
  Tasks are never retried (`max_retries=0`): a lost task is journaled as failed.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from core.engine.registry import ConfigError, check_kwargs
from core.evaluation.base import Evaluator, safe_evaluate
from core.evaluation.result import Result
from core.api import Arch


class Executor:
    """Base class: `submit` candidates, `wait` for finished ones, `close` at the end."""

    name = "executor"
    workers = 1

    def start(self, evaluator: Evaluator, timeout_s: float | None = None) -> None:
        raise NotImplementedError

    def submit(self, key: Hashable, arch: Arch) -> None:
        raise NotImplementedError

    def wait(self) -> list[tuple[Hashable, Result]]:
        """Block until at least one submitted evaluation has finished; return every finished one."""
        raise NotImplementedError

    def close(self) -> None:
        return None

    def map(self, evaluator: Evaluator, archs: Sequence[Arch], timeout_s: float | None = None) -> list[Result]:
        """Evaluate `archs` and return their results in the same order (starts and closes the executor)."""
        self.start(evaluator, timeout_s)
        try:
            for i, arch in enumerate(archs):
                self.submit(i, arch)
            results: dict[Hashable, Result] = {}
            while len(results) < len(archs):
                results.update(self.wait())
            return [results[i] for i in range(len(archs))]
        finally:
            self.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_timeout(timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"evaluator.timeout_s: expected a number of seconds > 0 or null, got {timeout_s!r}")
    return float(timeout_s)


def _prepared(evaluator: Evaluator) -> Evaluator:
    """Run the evaluator's one-time `prepare()` (if any) here, before copies go to the workers."""
    prepare = getattr(evaluator, "prepare", None)
    if callable(prepare):
        prepare()
    return evaluator


def _timed_out(timeout_s: float, cost: float) -> Result:
    return Result.failed(f"timed out after {timeout_s:g} s (evaluator.timeout_s)", cost)


# -- serial -------------------------------------------------------------------------------------------------

class _Timeout(BaseException):
    """Raised by the alarm inside a serial evaluation (a BaseException, so no evaluator's `except Exception` eats it)."""


class SerialExecutor(Executor):
    """Evaluate in this process, in submission order. A timeout uses SIGALRM (POSIX, main thread)."""

    name = "serial"

    def __init__(self):
        self._queue: deque[tuple[Hashable, Arch]] = deque()
        self.evaluator: Evaluator | None = None
        self.timeout_s: float | None = None

    def start(self, evaluator: Evaluator, timeout_s: float | None = None) -> None:
        self.evaluator, self.timeout_s = evaluator, _check_timeout(timeout_s)
        if self.timeout_s and (not hasattr(signal, "setitimer")
                               or threading.current_thread() is not threading.main_thread()):
            raise ConfigError("evaluator.timeout_s: the serial executor times evaluations out with SIGALRM, which "
                              "needs a POSIX system and the main thread; use search.executor: process")
        self._queue.clear()

    def submit(self, key: Hashable, arch: Arch) -> None:
        self._queue.append((key, arch))

    def wait(self) -> list[tuple[Hashable, Result]]:
        if not self._queue:
            raise RuntimeError("wait() with nothing submitted")
        key, arch = self._queue.popleft()
        return [(key, self._evaluate(arch))]

    def _evaluate(self, arch: Arch) -> Result:
        if not self.timeout_s:
            return safe_evaluate(self.evaluator, arch)

        def alarm(signum, frame):
            raise _Timeout

        start = time.perf_counter()
        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return safe_evaluate(self.evaluator, arch)
        except _Timeout:
            return _timed_out(self.timeout_s, time.perf_counter() - start)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def close(self) -> None:
        self._queue.clear()


# -- process pool -------------------------------------------------------------------------------------------

def _exit_with_parent() -> None:
    """End this worker when the driver dies, so a killed search leaves no evaluation running."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn, threads: int | None) -> None:
    """A pool worker: receive and load the evaluator once, then evaluate what the driver sends until told to stop."""
    _exit_with_parent()
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        evaluator = pickle.loads(conn.recv_bytes())
    except BaseException as err:  # noqa: BLE001 - reported to the driver, which stops the search with it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, arch = message
        result = safe_evaluate(evaluator, arch)
        try:
            conn.send(("done", (key, result)))
        except (BrokenPipeError, OSError):
            return


def _send_quietly(conn, payload: bytes) -> None:
    try:
        conn.send_bytes(payload)
    except (BrokenPipeError, OSError):
        pass  # the worker died first: its sentinel reports it


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"worker process died: killed by {name}{hint}"
    return f"worker process died: exit code {exitcode}"


class _Worker:
    def __init__(self, slot: int, process, conn):
        self.slot, self.process, self.conn = slot, process, conn
        self.ready = False
        self.task: tuple[Hashable, Arch] | None = None
        self.started = 0.0


class ProcessExecutor(Executor):
    """A pool of `workers` spawned processes; see the module docstring.

    `workers` defaults to the CPU count divided by `threads`, or with
    `num_gpus` per trial to as many trials as the GPUs hold. `gpus` lists the
    device ids to share out (default: every visible GPU).
    """

    name = "process"

    def __init__(self, workers: int | None = None, threads: int | None = 1, num_gpus: float = 0,
                 gpus: list | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"search.executor.threads: expected an integer >= 1 or null, got {threads!r}")
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or num_gpus < 0:
            raise ConfigError(f"search.executor.num_gpus: expected a number >= 0, got {num_gpus!r}")
        if num_gpus > 1 and num_gpus != int(num_gpus):
            raise ConfigError(f"search.executor.num_gpus: above 1, GPUs per trial must be whole, got {num_gpus!r}")
        if num_gpus and num_gpus < 1 and (1 / num_gpus) != round(1 / num_gpus):
            raise ConfigError(f"search.executor.num_gpus: a fraction of a GPU must be 1/k (0.5, 0.25, ...), "
                              f"got {num_gpus!r}")
        self.threads, self.num_gpus = threads, float(num_gpus)
        self.devices = self._devices(gpus) if num_gpus else []
        capacity = self._gpu_capacity()
        if workers is None:
            workers = capacity if num_gpus else max(1, (os.cpu_count() or 1) // (threads or 1))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"search.executor.workers: expected an integer >= 1, got {workers!r}")
        if num_gpus and workers > capacity:
            raise ConfigError(f"search.executor.workers: {workers} workers with num_gpus={num_gpus:g} need "
                              f"{math.ceil(workers * num_gpus)} GPUs; {len(self.devices)} are available")
        self.workers = workers
        self._pool: list[_Worker] = []
        self._queue: deque[tuple[Hashable, Arch]] = deque()
        self._done: list[tuple[Hashable, Result]] = []
        self._payload = b""
        self.timeout_s: float | None = None

    @staticmethod
    def _devices(gpus: list | None) -> list[str]:
        if gpus is not None:
            if isinstance(gpus, (str, bytes)) or not isinstance(gpus, Sequence) or not gpus:
                raise ConfigError(f"search.executor.gpus: expected a non-empty list of device ids, got {gpus!r}")
            return [str(g) for g in gpus]
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise ConfigError("search.executor.num_gpus: GPUs per trial were asked for, but torch sees no GPU here")
        return [str(i) for i in range(count)]

    def _gpu_capacity(self) -> int:
        if not self.num_gpus:
            return 0
        if self.num_gpus >= 1:
            return len(self.devices) // int(self.num_gpus)
        return len(self.devices) * round(1 / self.num_gpus)

    def visible_devices(self, slot: int) -> str | None:
        """`CUDA_VISIBLE_DEVICES` of the worker in `slot` (None: left as it is)."""
        if not self.num_gpus:
            return None
        if self.num_gpus >= 1:
            g = int(self.num_gpus)
            return ",".join(self.devices[slot * g:(slot + 1) * g])
        return self.devices[slot // round(1 / self.num_gpus)]

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, evaluator: Evaluator, timeout_s: float | None = None) -> None:
        self.timeout_s = _check_timeout(timeout_s)
        _prepared(evaluator)
        try:
            self._payload = pickle.dumps(evaluator)
        except Exception as err:  # noqa: BLE001 - any pickling failure means the same thing to the user
            raise ConfigError(f"search.executor: {type(evaluator).__name__} cannot be sent to worker processes "
                              f"({type(err).__name__}: {err}); use search.executor: serial") from None
        self._pool = [self._spawn(slot) for slot in range(self.workers)]

    def _spawn(self, slot: int) -> _Worker:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        env = {"CUDA_VISIBLE_DEVICES": self.visible_devices(slot)}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        process = ctx.Process(target=_worker_main, args=(child, self.threads), daemon=True,
                              name=f"archforge-worker-{slot}")
        saved = {k: os.environ.get(k) for k in env}
        try:  # a spawned interpreter inherits the environment at start: set it for this one child only
            for k, v in env.items():
                if v is not None:
                    os.environ[k] = v
            process.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        # the evaluator goes through the pipe, from a thread: the send waits until the new interpreter has
        # started and reads it, and the workers start side by side instead of one after another
        threading.Thread(target=_send_quietly, args=(parent, self._payload), daemon=True).start()
        return _Worker(slot, process, parent)

    def close(self) -> None:
        for w in self._pool:
            if not w.ready:  # still starting (its evaluator may be in the pipe): nothing to finish
                w.process.kill()
                continue
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5.0
        for w in self._pool:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5.0)
            w.conn.close()
        self._pool, self._queue, self._done = [], deque(), []

    # -- work ---------------------------------------------------------------------------------------------
    def submit(self, key: Hashable, arch: Arch) -> None:
        self._queue.append((key, arch))
        self._dispatch()

    def _dispatch(self) -> None:
        for w in self._pool:
            if not self._queue:
                return
            if w.ready and w.task is None:
                w.task = self._queue.popleft()
                w.started = time.monotonic()
                try:
                    w.conn.send(w.task)
                except (BrokenPipeError, OSError):
                    pass  # the worker died meanwhile: its sentinel reports the task as failed

    def wait(self) -> list[tuple[Hashable, Result]]:
        from multiprocessing.connection import wait as wait_any

        if not self._done and not self._queue and not any(w.task for w in self._pool):
            raise RuntimeError("wait() with nothing submitted")
        while not self._done:
            self._dispatch()
            waitables = {}
            for w in self._pool:
                waitables[w.conn] = w
                waitables[w.process.sentinel] = w
            ready = wait_any(list(waitables), timeout=self._next_deadline())
            for obj in ready:
                w = waitables[obj]
                if w not in self._pool:
                    continue  # replaced earlier in this round
                if obj is w.conn:
                    self._receive(w)
                elif not w.process.is_alive() or w.process.exitcode is not None:
                    self._receive(w)  # a message sent just before dying still counts
                    if w in self._pool:
                        self._bury(w, _death_reason(w.process.exitcode))
            self._expire()
        done, self._done = self._done, []
        return done

    def _receive(self, w: _Worker) -> None:
        try:
            while w.conn.poll():
                kind, value = w.conn.recv()
                if kind == "ready":
                    w.ready = True
                elif kind == "error":
                    self.close()
                    raise RuntimeError(f"search.executor: a worker could not load the evaluator: {value}")
                elif kind == "done":
                    self._done.append(value)
                    w.task = None
        except (EOFError, OSError):
            pass

    def _bury(self, w: _Worker, reason: str) -> None:
        """Report the dead worker's task as failed and start a replacement in its slot."""
        if not w.ready and w.task is None:
            self.close()
            raise RuntimeError(f"search.executor: a worker process failed to start ({reason})")
        if w.task is not None:
            key, _ = w.task
            self._done.append((key, Result.failed(reason, time.monotonic() - w.started)))
        w.conn.close()
        w.process.join(1.0)
        self._pool[self._pool.index(w)] = self._spawn(w.slot)

    def _next_deadline(self) -> float | None:
        if not self.timeout_s:
            return None
        busy = [w.started for w in self._pool if w.task is not None]
        if not busy:
            return None
        return max(0.0, min(busy) + self.timeout_s - time.monotonic()) + 0.01

    def _expire(self) -> None:
        if not self.timeout_s:
            return
        now = time.monotonic()
        for w in list(self._pool):
            if w.task is not None and now - w.started > self.timeout_s:
                self._receive(w)
                if w.task is None:
                    continue  # it finished just in time
                key, _ = w.task
                w.process.kill()
                w.process.join(5.0)
                w.task = None
                self._done.append((key, _timed_out(self.timeout_s, now - w.started)))
                w.conn.close()
                self._pool[self._pool.index(w)] = self._spawn(w.slot)


# -- Ray --------------------------------------------------------------------------------------------------

def _ray_evaluate(evaluator: Evaluator, arch: Arch, threads: int | None) -> Result:
    """One evaluation inside a Ray worker (Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return safe_evaluate(evaluator, arch)


def _ray_failure(err: BaseException) -> str:
    """A one-line reason for a Ray task that produced no result."""
    import ray.exceptions as rx

    first = (str(err).strip().splitlines() or [""])[0][:200]
    oom = getattr(rx, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return f"out of memory: Ray's memory monitor killed the worker ({first})"
    if isinstance(err, rx.NodeDiedError) or "node" in type(err).__name__.lower():
        return f"Ray node lost ({type(err).__name__}: {first})"
    if isinstance(err, rx.WorkerCrashedError):
        return f"worker process died ({type(err).__name__}: {first})"
    return f"{type(err).__name__}: {first}"


class RayExecutor(Executor):
    """One Ray task per evaluation; see the module docstring.

    `workers` (how many trials run at once) defaults to what the cluster's
    CPUs and GPUs hold at `num_cpus` and `num_gpus` per trial. `threads`
    (torch threads per trial) defaults to `num_cpus`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 workers: int | None = None, threads: int | None = None):
        for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"search.executor.{key}: expected a number >= 0, got {value!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"search.executor.workers: expected an integer >= 1 or null, got {workers!r}")
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(f"search.executor.address: expected 'auto', 'host:port' or null, got {address!r}")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("search.executor: ray is not installed; pip install 'archforge[dist]' "
                              "(or 'ray>=2.40')") from None
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.threads = threads if threads is not None else max(1, int(num_cpus))
        self._requested_workers = workers
        self.workers = workers or 1
        self._owns_ray = False
        self._queue: deque[tuple[Hashable, Arch]] = deque()
        self._refs: dict[Any, tuple[Hashable, float]] = {}
        self._evaluator_ref = None
        self._task = None
        self.timeout_s: float | None = None

    def start(self, evaluator: Evaluator, timeout_s: float | None = None) -> None:
        import ray

        self.timeout_s = _check_timeout(timeout_s)
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
            if address is None and self._requested_workers:  # a local instance sized for the trials
                kwargs["num_cpus"] = max(1, math.ceil(self._requested_workers * max(self.num_cpus, 1)))
            ray.init(address=address, **kwargs)
            self._owns_ray = True
        resources = ray.cluster_resources()
        if self.num_gpus and resources.get("GPU", 0) < self.num_gpus:
            raise ConfigError(f"search.executor.num_gpus: {self.num_gpus:g} GPUs per trial, but the Ray cluster "
                              f"has {resources.get('GPU', 0):g}")
        if self._requested_workers is None:
            fits = [resources.get("CPU", 1) / self.num_cpus if self.num_cpus else math.inf,
                    resources.get("GPU", 0) / self.num_gpus if self.num_gpus else math.inf]
            self.workers = max(1, int(min(fits))) if math.isfinite(min(fits)) else max(1, int(resources.get("CPU", 1)))
        _prepared(evaluator)
        try:
            self._evaluator_ref = ray.put(evaluator)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"search.executor: {type(evaluator).__name__} cannot be sent to Ray workers "
                              f"({type(err).__name__}: {err}); use search.executor: serial") from None
        self._task = ray.remote(_ray_evaluate).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                        max_retries=0)

    def submit(self, key: Hashable, arch: Arch) -> None:
        self._queue.append((key, arch))
        self._dispatch()

    def _dispatch(self) -> None:
        """At most `workers` tasks out at once, so a timeout counts from when a trial can start."""
        while self._queue and len(self._refs) < self.workers:
            key, arch = self._queue.popleft()
            ref = self._task.remote(self._evaluator_ref, arch, self.threads)
            self._refs[ref] = (key, time.monotonic())

    def wait(self) -> list[tuple[Hashable, Result]]:
        import ray

        if not self._refs and not self._queue:
            raise RuntimeError("wait() with nothing submitted")
        done: list[tuple[Hashable, Result]] = []
        while not done:
            self._dispatch()
            timeout = None
            if self.timeout_s:
                first = min(started for _, started in self._refs.values())
                timeout = max(0.0, first + self.timeout_s - time.monotonic()) + 0.01
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            for ref in ready:
                key, started = self._refs.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:
                    result = Result.failed(_ray_failure(err), time.monotonic() - started)
                done.append((key, result))
            if self.timeout_s:
                now = time.monotonic()
                for ref, (key, started) in list(self._refs.items()):
                    if now - started > self.timeout_s:
                        ray.cancel(ref, force=True)
                        del self._refs[ref]
                        done.append((key, _timed_out(self.timeout_s, now - started)))
        return done

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for ref in list(self._refs):
                ray.cancel(ref, force=True)
        self._refs, self._queue = {}, deque()
        self._evaluator_ref = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


EXECUTORS: dict[str, type[Executor]] = {"serial": SerialExecutor, "process": ProcessExecutor, "ray": RayExecutor}


def make_executor(spec: str | Mapping[str, Any] | None = "serial") -> Executor:
    """An executor from `search.executor`: a name (`serial`, `process`, `ray`) or `{name: ..., option: ...}`."""
    if spec is None:
        spec = "serial"
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"search.executor: expected a name or a mapping with a 'name', got {spec!r}")
    options = dict(spec)
    name = options.pop("name", None)
    if name not in EXECUTORS:
        raise ConfigError(f"search.executor.name: unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    cls = EXECUTORS[name]
    return cls(**check_kwargs(cls, options, "search.executor"))


__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "RayExecutor", "EXECUTORS", "make_executor"]
