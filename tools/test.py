"""`python tools/test.py CONFIG [key=value ...]`: same as `archforge test`."""

import sys
from pathlib import Path

# replace tools/ on the path by the repo root: tools/profile.py must not hide the standard `profile` module
sys.path[0] = str(Path(__file__).resolve().parents[1])

from core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
