"""Where paramcrop caches what it generates or measures (the synthetic benchmark, video probes)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "PARAMCROP_CACHE"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$PARAMCROP_CACHE``, else the platform cache folder + ``/paramcrop``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "paramcrop"
