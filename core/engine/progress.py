"""Progress bars: one switch for every tool (`--no-progress` or `ARCHFORGE_NO_PROGRESS=1`)."""

from __future__ import annotations

import os


def progress_enabled(progress: bool = True) -> bool:
    """True when a bar should be drawn: asked for, and not switched off by `ARCHFORGE_NO_PROGRESS`."""
    return bool(progress) and not os.environ.get("ARCHFORGE_NO_PROGRESS")
