"""Shared look and output conventions of the analyses.

- Style: paper column width (one panel ~3.5 in wide), every font >= 8 pt, colour-blind-safe
  palette (seaborn ``colorblind``), the random-crop baseline dashed in dark grey, PDFs with
  embedded TrueType fonts.
- Labels in words: ``"ParamCrop, λ=1.0"``, ``"Random crop (baseline)"``, ``"SimCLR"``.
- Outputs: every analysis writes PNG + PDF + CSV (and Markdown for tables) into one folder,
  default ``./analysis-<study or experiment>/`` (``./analysis-runs/`` for ``--runs``), all
  files of one call or none: they are written to temporary names and renamed at the end.
- When a study is analysed, the files are also logged to the study's parent run under the
  artifact path ``analysis/`` so that the MLflow UI shows them.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

# --- parameter names (tracking conventions, docs/DESIGN.md) --------------------------------
P_CROP = "crop.method"
P_STRENGTH = "crop.strength"
P_FRAMEWORK = "framework.name"
P_BACKBONE = "backbone.name"
P_HEAD = "head.name"
P_REGION = "losses.region"  # auxiliary-loss weights: 0 = off
P_ORDER = "losses.order"
P_LOSSES = (P_REGION, P_ORDER)
DEFAULT_HEAD = "mlp"  # what a run without a head.name param used
P_SEED = "seed"
P_STEPS = "steps"
BASELINE_METHOD = "random"

PANEL_WIDTH_IN = 3.5
PANEL_HEIGHT_IN = 2.5
FONT_PT = 8
DPI = 300
BASELINE_COLOUR = "0.2"
ARTIFACT_PATH = "analysis"

FRAMEWORK_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2", "mocov2": "MoCo v2", "moco_v2": "MoCo v2",
                   "byol": "BYOL"}
BACKBONE_NAMES = {"tiny3d": "Tiny3D", "r3d_18": "R3D-18", "mc3_18": "MC3-18",
                  "r2plus1d_18": "R(2+1)D-18", "s3d": "S3D"}
HEAD_NAMES = {"mlp": "MLP", "cate": "CATE"}
BASELINE_LABEL = "Random crop (baseline)"
NO_LOSSES = "none"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


def crop_label(method, strength=None, dof=None, generator_input=None, coupling=None,
               uncontrolled=None, budget=None, budget_schedule=None, optimizer=None, grad_fraction=None) -> str:
    """``"ParamCrop, λ=1.0"``, ``"Random crop (baseline)"``, ``"CVRL crop"``, ``"Hardest views"``; with
    the crop parameterisation params (``crop.dof``, ``crop.generator_input``, ``crop.coupling``,
    ``crop.uncontrolled``, ``crop.budget``, ``crop.budget_schedule``, ``optim.generator_optimizer``,
    ``crop.grad_fraction``) given: ``"ParamCrop spatial, λ=1.0"``, ``"ParamCrop spatiotemporal, input
    none, λ=1.0"``, ``"ParamCrop spatiotemporal, budget 0.6, optimizer sgd, λ=1.0"``, ``"ParamCrop
    spatiotemporal, grad fraction 0.5, λ=1.0"``, ``"Random crop temporal (baseline)"``. A run without
    ``crop.dof`` names no parameterisation; the optimiser is named only for a crop with a strength (one with an
    adversary)."""
    from paramcrop.crops import method_label
    from paramcrop.crops.dof import parameterisation_name

    parameterisation = ""
    if not _missing(dof):
        parameterisation = " " + parameterisation_name(dof, generator_input, coupling, uncontrolled, budget,
                                                       budget_schedule, None if _missing(strength) else optimizer,
                                                       grad_fraction)
    if method == BASELINE_METHOD:
        return BASELINE_LABEL if not parameterisation else f"{method_label(method)}{parameterisation} (baseline)"
    name = (method_label(str(method)) if not _missing(method) else "unknown crop") + parameterisation
    return name if _missing(strength) else f"{name}, λ={strength}"


def head_label(name) -> str:
    """``"MLP"``, ``"CATE"``; a run without a head param used the MLP head."""
    name = DEFAULT_HEAD if _missing(name) else name
    return HEAD_NAMES.get(name, str(name))


def losses_label(weights: Mapping[str, float]) -> str:
    """The auxiliary losses that are on, by name: ``"none"``, ``"region"``, ``"order"``,
    ``"region+order"``; a weight other than 1 is shown, ``"region=0.5+order"``.
    ``weights``: loss param (``losses.region``) -> weight (missing or 0 = off)."""
    on = []
    for param in P_LOSSES:
        w = weights.get(param)
        w = 0.0 if _missing(w) else float(w)
        if w != 0:
            name = param.split(".", 1)[1]
            on.append(name if w == 1 else f"{name}={w:g}")
    return "+".join(on) or NO_LOSSES


def losses_words(label: str) -> str:
    """An :func:`losses_label` for a legend or row label: ``"none"`` -> ``"no extra losses"``."""
    return "no extra losses" if label == NO_LOSSES else label


def percent(level: float) -> str:
    """A confidence level as people write it: 0.95 -> ``95%``, 0.975 -> ``97.5%`` (not ``98%``)."""
    return f"{level * 100:g}%"


def legend_width_in(chars: int) -> float:
    """Figure width (inches) that fits a one-column legend entry of ``chars`` characters at
    :data:`FONT_PT` beside its handle."""
    return 0.9 + 0.062 * chars


def param_label(param: str, value) -> str:
    """A varied parameter in words: framework and backbone names, else ``param=value``."""
    if _missing(value):
        return f"{param}=–"
    if param == P_FRAMEWORK:
        return FRAMEWORK_NAMES.get(value, str(value))
    if param == P_BACKBONE:
        return BACKBONE_NAMES.get(value, str(value))
    if param == P_CROP:
        return crop_label(value)
    if param == P_HEAD:
        return f"{head_label(value)} head"
    return f"{param}={value}"


def safe_name(name: str) -> str:
    """A file-name-safe version of a study or experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def default_out(selection_name: str) -> Path:
    """``./analysis-<name>/`` in the working directory."""
    return Path(f"analysis-{safe_name(selection_name)}")


def numeric(values: pd.Series) -> pd.Series:
    """Params are logged as strings: as floats, NaN where not a number."""
    return pd.to_numeric(values, errors="coerce")


def sort_key(value):
    """Sort key of a param value: numbers by value first, then strings (missing = "")."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, "" if _missing(value) else str(value))


def head_sort_key(name):
    """The default (MLP) head first, then by name."""
    return (name != DEFAULT_HEAD, sort_key(name))


def losses_sort_key(region: float, order: float) -> tuple:
    """Auxiliary-loss weights: none, region, order, region+order; then by weight."""
    return (int(region != 0) + int(order != 0), region == 0, region, order)


# --- style ---------------------------------------------------------------------------------
def paper_rc() -> dict:
    return {
        "font.size": FONT_PT, "axes.titlesize": FONT_PT + 1, "axes.labelsize": FONT_PT,
        "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT,
        "legend.title_fontsize": FONT_PT, "figure.titlesize": FONT_PT + 1,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.linewidth": 0.4, "grid.alpha": 0.5, "lines.linewidth": 1.4,
        "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": DPI, "figure.dpi": 100,
    }


@contextmanager
def paper_style() -> Iterator[None]:
    """Seaborn ``ticks`` style with :func:`paper_rc`; create *and* save figures inside."""
    import matplotlib
    import seaborn as sns

    with sns.axes_style("ticks"), matplotlib.rc_context(paper_rc()):
        yield


def palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 1)))


def new_figure(width_in: float, height_in: float) -> "Figure":
    """A figure that does not touch pyplot's global state (no backend needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


# --- outputs -------------------------------------------------------------------------------
def figure_writers(fig: "Figure", stem: str) -> dict[str, Callable[[Path], None]]:
    """PNG and PDF writers for :func:`write_outputs`."""
    return {f"{stem}.png": lambda p: fig.savefig(p, format="png", dpi=DPI),
            f"{stem}.pdf": lambda p: fig.savefig(p, format="pdf")}


def csv_writer(frame: pd.DataFrame) -> Callable[[Path], None]:
    return lambda p: frame.to_csv(p, index=False)  # shortest round-trip repr: exact


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text, encoding="utf-8")


def write_outputs(out_dir: Path, writers: Mapping[str, Callable[[Path], None]]) -> list[Path]:
    """Write every file or none: each writer gets a temporary path in ``out_dir``; all are
    renamed into place at the end. On error the temporary files (and ``out_dir`` when this
    call created it and it is left empty) are removed and the error re-raised."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            final = out_dir / name
            tmp = out_dir / f".{name}.partial-{os.getpid()}"
            pending.append((tmp, final))
            write(tmp)
        for tmp, final in pending:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return [final for _, final in pending]


def publish(report, client: "MlflowClient", selection, out: Path | None,
            writers: Mapping[str, Callable[[Path], None]], log: bool = True) -> None:
    """Write ``writers`` into ``out`` (default :func:`default_out`) and, when ``selection`` is a
    study and ``log`` is set, log the files to the study's parent run; fills ``report``."""
    out_dir = Path(out) if out is not None else default_out(selection.name)
    report.paths = write_outputs(out_dir, writers)
    if log and selection.kind == "study" and selection.parent_run_id:
        warning = log_to_run(client, selection.parent_run_id, report.paths)
        if warning:
            report.warnings.append(warning)
        else:
            report.logged_to = selection.parent_run_id


def log_to_run(client: "MlflowClient", run_id: str, paths: list[Path],
               artifact_path: str = ARTIFACT_PATH) -> str | None:
    """Log ``paths`` as artifacts of ``run_id``; returns a warning message on failure (the
    local files stay valid) and None on success."""
    try:
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:  # noqa: BLE001 - any artifact-store failure is only a warning
        return f"could not log the figures to run {run_id}: {exc}"
    return None
