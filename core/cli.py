"""`archforge search|train|test|export|profile CONFIG [key=value ...]`.

Parses the command line, loads the config, sets the thread count and
dispatches to `core.pipeline`. User mistakes (a bad key, a wrong type, a
missing path, a damaged data file, checkpoint or journal) end with one line
naming the problem and exit code 2, before a run folder is written; set
ARCHFORGE_DEBUG=1 for a traceback. A search that finds nothing feasible exits
1 with the most common reasons; Ctrl-C exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading

from core.engine.config import load_config
from core.engine.registry import ConfigError
from core.search import ResumeError

COMMANDS = ("search", "train", "test", "export", "profile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archforge", description="Search, train, test, export and profile "
                                     "compact vision networks from one YAML config.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. search.budget=50 threads=4")
    parser.add_argument("--resume", metavar="RUN_DIR", help="search: continue the search journaled in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress and not os.environ.get("ARCHFORGE_NO_PROGRESS")
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(True)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        return run(args, progress)
    except KeyboardInterrupt:
        print(f"\narchforge {args.command}: {resume_hint(args)}", file=sys.stderr, flush=True)
        return 130
    except SystemExit:
        if interrupted:  # Lightning turns Ctrl-C into sys.exit(1) after its own clean-up
            print(f"\narchforge {args.command}: {resume_hint(args)}", file=sys.stderr, flush=True)
            return 130
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run(args, progress: bool) -> int:
    import torch

    from core import pipeline
    from core.engine.data import DataError
    from core.engine.runs import CheckpointError
    from core.engine.validate import default_threads
    from core.journal import JournalError

    pipeline.RUN.clear()
    try:
        cfg = load_config(args.config, args.overrides)
        torch.set_num_threads(int(cfg.get("threads") or default_threads()))
        if args.command == "search":
            return pipeline.search(cfg, progress, args.resume)
        return pipeline.COMMANDS[args.command](cfg, progress)
    except (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError,
            ResumeError, JournalError, DataError, CheckpointError) as err:
        if pipeline.RUN.get("fresh") and pipeline.RUN.get("run_dir"):
            pipeline.discard_if_unused(pipeline.RUN["run_dir"])
        if os.environ.get("ARCHFORGE_DEBUG"):
            raise
        print(f"archforge {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def resume_hint(args) -> str:
    from core import pipeline

    run_dir = pipeline.RUN.get("run_dir")
    if args.command != "search" or run_dir is None:
        return "interrupted; nothing was kept to resume from: run the command again"
    words = ["archforge", "search", args.config, *args.overrides, "--resume", str(run_dir)]
    return "interrupted; continue with: " + " ".join(words)


def one_line(err: BaseException) -> str:
    """The error's message on one line; from a DataLoader worker, the original error's own line (torch puts the
    worker's whole traceback into the message)."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return " ".join(message.split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
