"""`archforge search|train|test|export|profile CONFIG [key=value ...]`.

Parses the command line, loads the config and dispatches to `core.pipeline`.
Every command prints what it will do, shows progress, and ends with a short
table. User mistakes (a bad key, a wrong type, a missing path) end with one
line naming the problem and exit code 2; set ARCHFORGE_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.engine.config import load_config
from core.engine.registry import ConfigError
from core.search import ResumeError

COMMANDS = ("search", "train", "test", "export", "profile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archforge", description="Search, train, test, export and profile "
                                     "compact vision networks from one YAML config.")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. search.budget=50")
    parser.add_argument("--resume", metavar="RUN_DIR", help="search: continue the search journaled in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress and not os.environ.get("ARCHFORGE_NO_PROGRESS")
    try:
        from core import pipeline

        cfg = load_config(args.config, args.overrides)
        if args.command == "search":
            return pipeline.search(cfg, progress, args.resume)
        return pipeline.COMMANDS[args.command](cfg, progress)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, ResumeError) as err:
        if os.environ.get("ARCHFORGE_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"archforge {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
