"""`python tools/search.py CONFIG [key=value ...]`: same as `archforge search`."""

import sys
from pathlib import Path

# replace tools/ on the path by the repo root: tools/profile.py must not hide the standard `profile` module
sys.path[0] = str(Path(__file__).resolve().parents[1])

from core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
