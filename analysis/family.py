"""Which comparisons one call of ``analyze compare`` / ``analyze power`` makes: its *family*.

- ``--baseline`` given, or no declared comparisons: every configuration against the baseline
  (:func:`choose_baseline`: a configuration's label, or ``key=value`` conditions that one
  configuration meets, :func:`conditions`; default the one random-crop configuration).
- Otherwise, for a study whose spec declares ``compare`` (:mod:`studies.spec`): the declared
  comparisons. The spec is the study's own (``study.yaml``, logged to its parent run when it was
  created); when that declares none, the built-in spec of the study's name does (a note says so).
  Several experiments analysed together (blocks of one design, ``study run SPEC --seeds 5-9
  --only ...``) use the first one's declared comparisons when the others' grids are parts of its.
  A label is resolved through the trial run names (``t3 crop=paramcrop seed=1``: each search-space
  dimension's value): the runs whose name has the label's value in its dimension. A declared
  comparison pairs each against-configuration with the baseline-configuration whose runs agree
  with it on every other dimension of the spec (seed aside), so a spec with ``crop`` x
  ``backbone.name`` compares the crops within each backbone. A label without runs, or a stratum
  without exactly one configuration of each side, is left out with a note.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from analysis import groups
from analysis.errors import NoDataError, NotFoundError
from analysis.load import Selection, column
from analysis.plots import BASELINE_METHOD, P_CROP

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from studies.spec import StudySpec

SPEC_ARTIFACT = "study.yaml"
SEED = "seed"


@dataclass(frozen=True)
class Pair:
    """One comparison: configuration ``against`` minus configuration ``baseline`` (``config`` ids);
    ``declared``: the spec's words for it, e.g. ``paramcrop vs paramcrop-l0``, else None."""

    baseline: int
    against: int
    declared: str | None = None


def study_spec(client: "MlflowClient", sel: Selection) -> tuple["StudySpec | None", list[str]]:
    """The spec whose ``compare`` a study uses (module doc) and notes; None when none declares any.

    Several experiments (``--experiment A --experiment B``) use the first one's declared comparisons
    when every one is a study whose grid is part of the first's (:meth:`StudySpec.holds_block`):
    blocks of one design (``study run SPEC --seeds 5-9 --only ...``), analysed together.
    A declared comparison naming an unknown label is :class:`NotFoundError` (exit 2)."""
    from analysis.load import list_studies

    if sel.kind == "study" and sel.parent_run_id:
        parents = [(sel.name, sel.parent_run_id)]
    elif sel.kind == "experiment":
        studies = list_studies(client).drop_duplicates("experiment_id")  # newest parent run first
        by_id = dict(zip(studies["experiment_id"], zip(studies["study"], studies["parent_run_id"])))
        if not all(e in by_id for e in sel.experiment_ids):
            return None, []
        parents = [by_id[e] for e in sel.experiment_ids]
    else:
        return None, []
    notes: list[str] = []
    first = _declaring_spec(client, *parents[0], notes)
    if first is None:
        return None, notes
    for name, parent in parents[1:]:
        block = _study_yaml(client, name, parent, notes)
        if block is None or not first.holds_block(block):
            notes.append(f"study {name!r}'s grid is no block of {parents[0][0]!r}'s (other dimensions or "
                         "values): no declared comparisons used")
            return None, notes
    return first, notes


def _declaring_spec(client: "MlflowClient", name: str, parent_run_id: str, notes: list[str]) -> "StudySpec | None":
    """Study ``name``'s own spec (its parent run's ``study.yaml``) if it declares comparisons, else the
    built-in spec of that name if it does (a note says so), else None."""
    from studies.spec import SPEC_DIR

    own = _study_yaml(client, name, parent_run_id, notes)
    if own is not None and own.compare:
        return own
    builtin = SPEC_DIR / f"{name}.yaml"
    if builtin.is_file():
        spec = _load(builtin.read_text(), f"built-in spec {name!r}", notes)
        if spec is not None and spec.compare:
            notes.append(f"declared comparisons from the built-in spec {name!r} (the study's own "
                         f"{SPEC_ARTIFACT} declares none)")
            return spec
    return None


def _study_yaml(client: "MlflowClient", name: str, parent_run_id: str, notes: list[str]) -> "StudySpec | None":
    """Study ``name``'s own spec, its parent run's ``study.yaml``; None when it has none or it does not load."""
    import tempfile

    from analysis.queries import quiet_downloads

    if SPEC_ARTIFACT not in {f.path for f in client.list_artifacts(parent_run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        with open(client.download_artifacts(parent_run_id, SPEC_ARTIFACT, tmp)) as handle:
            text = handle.read()
    return _load(text, f"study {name!r}'s {SPEC_ARTIFACT}", notes)


def _load(text: str, source: str, notes: list[str]) -> "StudySpec | None":
    from studies.spec import SpecError, StudySpec

    try:
        return StudySpec.from_yaml(text, source=source)
    except SpecError as exc:
        if str(exc).startswith("compare"):
            raise NotFoundError(f"{source}: {exc}") from None
        notes.append(f"{source} does not load ({exc}): no declared comparisons from it")
        return None


def conditions(spec: str) -> dict[str, str]:
    """``"a=1,b=(0.5, 1.0)"`` -> ``{"a": "1", "b": "(0.5, 1.0)"}`` (commas inside brackets kept);
    raises :class:`NotFoundError` when a part is not ``key=value``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise NotFoundError(f"--baseline {spec!r}: {part.strip()!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def listing(labels: Sequence[str]) -> str:
    """The configurations' labels, one a line, for an error message."""
    return "Configurations:\n" + "\n".join(f"  {lab}" for lab in labels)


def choose_baseline(runs: pd.DataFrame, configs: pd.DataFrame, spec: str | None,
                    required: bool = True) -> int | None:
    """The baseline's ``config`` id (module doc). ``configs``: :func:`analysis.groups.configurations`
    of ``runs`` (its labels are the ones ``spec`` may name). Without ``spec`` and without a single
    random-crop configuration: None, or (``required``) :class:`NotFoundError`."""
    first = configs.drop_duplicates("config").sort_values("config")
    labels = list(first["configuration"])
    if spec is not None and spec.strip() in labels:
        return int(first.loc[first["configuration"] == spec.strip(), "config"].iloc[0])
    if spec is None:
        wanted = {P_CROP: BASELINE_METHOD}
        what = f"no --baseline given and {{}} random-crop configurations ({P_CROP}=random)"
    else:
        if "=" not in spec:
            raise NotFoundError(f"--baseline {spec!r} is no configuration here and no key=value condition. "
                                + listing(labels))
        wanted, what = conditions(spec), f"--baseline {spec!r} matches {{}} configurations"
    match = pd.Series(True, index=runs.index)
    for key, value in wanted.items():
        if f"params.{key}" not in runs.columns and key not in groups.PARAM_DEFAULTS:
            raise NotFoundError(f"--baseline {spec!r}: no param {key!r} in these runs. " + listing(labels))
        logged = column(runs, f"params.{key}", groups.PARAM_DEFAULTS.get(key))
        match &= logged.map(groups.canonical) == groups.canonical(value)
    ids = sorted(set(configs.loc[match.to_numpy(), "config"]))
    if len(ids) == 1:
        return int(ids[0])
    if spec is None and not required:
        return None
    hint = "; name one with --baseline LABEL or --baseline KEY=VALUE,..." if spec is None else ""
    raise NotFoundError(what.format(len(ids)) + hint + ". " + listing(labels))


def comparisons(sel: Selection, client: "MlflowClient", values: pd.DataFrame, configs: pd.DataFrame,
                baseline: str | None) -> tuple[list[Pair], list[str]]:
    """The comparisons of one call (module doc): ``(pairs, notes)``. ``values``: the runs' objective
    values with canonical seeds (:func:`analysis.values.seeded_values`), ``configs``: the
    configurations of ``sel.runs``. :class:`NoDataError` when the baseline has no objective value or
    nothing but the baseline is here."""
    if baseline is None:
        spec, notes = study_spec(client, sel)
        if spec is not None:
            pairs, more = declared_pairs(spec, sel.runs, configs)
            valued = set(values["config"])
            more += [f"declared comparison {p.declared}: no {sel.objective} value on one side: left out"
                     for p in pairs if not {p.baseline, p.against} <= valued]
            pairs = [p for p in pairs if {p.baseline, p.against} <= valued]
            if pairs:
                return pairs, notes + [f"the {len(pairs)} comparison(s) the spec declares (compare:)"] + more
            notes += more + ["no declared comparison has runs here: every configuration against the baseline"]
    else:
        notes = []
    chosen = choose_baseline(sel.runs, configs, baseline)
    if chosen not in set(values["config"]):
        raise NoDataError(f"the baseline {configs.loc[configs['config'] == chosen, 'configuration'].iloc[0]} "
                          f"has no {sel.objective} value")
    others = sorted(set(values["config"]) - {chosen})
    if not others:
        raise NoDataError("only the baseline configuration is here: nothing to compare. "
                          + listing(list(configs.drop_duplicates("config")["configuration"])))
    return [Pair(chosen, c) for c in others], notes


def run_points(spec: "StudySpec", runs: pd.DataFrame) -> pd.DataFrame:
    """``run_id`` and one column per search-space dimension of ``spec``: the value its trial run name
    shows (``t3 crop=paramcrop seed=1`` -> ``crop: paramcrop``), None where the name has none."""
    keys = sorted({d.key for d in spec.search_space} | {SEED}, key=len, reverse=True)
    pattern = re.compile(r"(?<= )(" + "|".join(map(re.escape, keys)) + r")=")
    rows = []
    for rid, name in zip(runs["run_id"], runs.get("run_name", pd.Series([None] * len(runs)))):
        name = re.sub(r" \(retry of t\d+\)$", "", str(name or ""))
        found = list(pattern.finditer(name))
        point = {"run_id": rid}
        for m, nxt in zip(found, found[1:] + [None]):
            point[m.group(1)] = name[m.end():nxt.start() - 1 if nxt else len(name)]
        rows.append(point)
    return pd.DataFrame(rows, columns=["run_id", *[d.key for d in spec.search_space]])


def declared_pairs(spec: "StudySpec", runs: pd.DataFrame, configs: pd.DataFrame) -> tuple[list[Pair], list[str]]:
    """The :class:`Pair` list of ``spec``'s declared comparisons among ``runs`` (``configs``: their
    :func:`analysis.groups.configurations`) and notes on what could not be paired (module doc)."""
    points = run_points(spec, runs).merge(configs[["run_id", "config"]], on="run_id")
    points = points.astype(object).where(points.notna(), None)
    dims = [d.key for d in spec.search_space]
    pairs, notes = [], []
    for c in spec.compare:
        dim, base_value = spec.label(c.baseline)
        others = [k for k in dims if k != dim]
        base = _strata(points, dim, base_value, others)
        for label in c.against:
            declared = f"{label} vs {c.baseline}"
            mine = _strata(points, dim, spec.label(label)[1], others)
            if not mine or not base:
                notes.append(f"declared comparison {declared}: no runs of "
                             f"{' and '.join(x for x, s in ((label, mine), (c.baseline, base)) if not s)}")
                continue
            for stratum, ids in mine.items():
                partner = base.get(stratum, set())
                where = ", ".join(f"{k}={v}" for k, v in zip(others, stratum) if v is not None)
                name = f"{declared} ({where})" if where and len(mine) > 1 else declared
                if len(ids) == 1 and len(partner) == 1:
                    pairs.append(Pair(next(iter(partner)), next(iter(ids)), name))
                else:
                    notes.append(f"declared comparison {name}: {len(ids)} configuration(s) against {len(partner)} "
                                 f"of the baseline; one of each is needed: left out")
    return pairs, notes


def _strata(points: pd.DataFrame, dim: str, value: str, others: list[str]) -> dict[tuple, set[int]]:
    """Configurations of the runs whose ``dim`` is ``value``, by their values of the ``others``."""
    sel = points[points[dim] == value]
    out: dict[tuple, set[int]] = {}
    for row in sel.to_dict("records"):
        out.setdefault(tuple(row[k] for k in others), set()).add(int(row["config"]))
    return out
