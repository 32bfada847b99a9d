"""The metric-name part of a data source string (``eval/<name>/<metric>``), the table in :mod:`paramcrop.transfer`.

A leaf module: :mod:`paramcrop.config` checks ``eval.datasets`` with it at import cost of nothing but
``re``; the data layer is imported only when a name is computed.
"""
from __future__ import annotations

import re
from pathlib import Path


def dataset_name(source: str) -> str:
    """The metric-name part of a downstream source (see the module table); ``ValueError`` for a bad source."""
    from paramcrop.data.sources import SOURCE_FORMS, split_of

    scheme, _, rest = source.partition(":")
    if scheme == "synthetic":
        from paramcrop.data.synthetic import SyntheticConfig

        SyntheticConfig.from_options(rest)  # checks the keys and values
        items = [item.partition("=") for item in filter(None, rest.split(","))]
        parts = [value if key.strip() == "variant" else f"{key.strip()}{value}" for key, _, value in items]
        name = "-".join(["synthetic", *parts])
    elif scheme == "folder" and rest:
        name = f"folder-{Path(rest).resolve().name}"
    elif scheme in ("ucf101", "hmdb51") and rest:
        split = split_of(source)
        name = scheme if split is None else f"{scheme}-{split}"
    elif scheme == "kinetics" and re.fullmatch(r"(.+?\.csv):(.+)", rest, flags=re.IGNORECASE):
        name = f"kinetics-{Path(rest.split(':')[0]).stem}"
    else:
        raise ValueError(f"bad data source {source!r}: expected one of " + ", ".join(SOURCE_FORMS))
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
