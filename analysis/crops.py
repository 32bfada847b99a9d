"""``paramcrop analyze crops --run ID``: a run's crop visualisations in one figure.

Training logs PNG strips of the raw clip with both views' cubes (``paramcrop.visualize``)
under the artifact path ``crops/`` of the run. They are downloaded to a temporary folder,
ordered by the first number in their file name (the step, e.g. ``crops/step_000100.png``),
then by name, and laid out in a grid of ``--cols`` columns (default: up to 3), each titled
with its step. Written as ``crops-<run id[:8]>.png/.pdf`` plus a CSV listing the images in
plotted order, to ``--out`` (default ``./analysis-<experiment>/``); not logged to MLflow
(the images are already artifacts of that run).
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.errors import NoDataError, NotFoundError
from analysis.report import Report

CROPS_ARTIFACT_PATH = "crops"


def _list_pngs(client, run_id: str, path: str) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out += _list_pngs(client, run_id, info.path)
        elif info.path.lower().endswith(".png"):
            out.append(info.path)
    return out


@contextmanager
def _no_progress_bars():
    """MLflow draws a progress bar per downloaded artifact; not here."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _step(path: str) -> int | None:
    m = re.search(r"(\d+)", Path(path).stem)
    return int(m.group(1)) if m else None


def crops(run_id: str, tracking_uri: str | None = None, out: Path | None = None, cols: int | None = None) -> Report:
    from matplotlib.image import imread
    from mlflow.exceptions import MlflowException

    from analysis.store import open_client

    client = open_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise NotFoundError(f"unknown run id {run_id!r}") from None
    try:
        pngs = _list_pngs(client, run_id, CROPS_ARTIFACT_PATH)
    except Exception as exc:  # noqa: BLE001 - an unreachable artifact store
        raise NoDataError(f"cannot list the artifacts of run {run_id}: {exc}") from exc
    if not pngs:
        raise NoDataError(
            f"run {run_id} ({run.info.run_name}) has no PNG under artifact path {CROPS_ARTIFACT_PATH}/: "
            "training logs crop visualisations when its visualize_at setting is > 0"
        )
    listing = pd.DataFrame({"artifact_path": pngs, "step": [_step(p) for p in pngs]})
    listing["_k"] = [(s is None, s or 0, p) for s, p in zip(listing["step"], listing["artifact_path"])]
    listing = listing.sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
    listing["step"] = listing["step"].astype("Int64")
    n = len(listing)
    cols = max(1, min(cols or min(n, 3), n))
    rows = -(-n // cols)
    experiment = client.get_experiment(run.info.experiment_id).name
    report = Report(f"crops (run {run_id})")
    with tempfile.TemporaryDirectory() as tmp:
        with _no_progress_bars():
            images = [imread(client.download_artifacts(run_id, p, tmp)) for p in listing["artifact_path"]]
        aspect = max(img.shape[0] / img.shape[1] for img in images)
        width = 2 * plots.PANEL_WIDTH_IN
        cell_w = width / cols
        with plots.paper_style():
            fig = plots.new_figure(width, rows * (cell_w * aspect + 0.25) + 0.35)
            axes = fig.subplots(rows, cols, squeeze=False)
            for ax in axes.flat:
                ax.set_axis_off()
            for ax, img, (_, r) in zip(axes.flat, images, listing.iterrows()):
                ax.imshow(img)
                ax.set_title(f"step {r['step']}" if pd.notna(r["step"]) else Path(r["artifact_path"]).stem)
            fig.suptitle(f"Run {run.info.run_name or run_id} ({experiment}): crop views during training")
            stem = f"crops-{run_id[:8]}"
            writers = {**plots.figure_writers(fig, stem), f"{stem}.csv": plots.csv_writer(listing)}
            out_dir = Path(out) if out is not None else plots.default_out(experiment)
            report.paths = plots.write_outputs(out_dir, writers)
    report.data.update(listing=listing)
    return report
