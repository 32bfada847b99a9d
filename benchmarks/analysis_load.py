"""How fast ``analysis/`` loads a study from a local SQLite MLflow store.

Fills a temporary store with one study: a parent run and ``--runs`` finished trial runs
(random crop and ParamCrop at three strengths, several seeds) of ``--steps`` logged steps x 8
metrics (``train/loss``, ``train/lr``, ``train/clips_per_s`` and five ``view/*`` metrics), with
``MlflowClient.log_batch`` (1,000 metrics per call), then times:

- selecting the study's runs (params, tags, final metrics) into a frame,
- loading every history (all 8 metrics) with the SQL bulk read (the default on SQL stores),
- the same through ``MlflowClient.get_metric_history`` per run and metric in a thread pool
  (the path used for REST tracking servers; ``--client``),
- the whole ``paramcrop analyze iou-curves`` computation and figure (``--plot``).

Requirement: 50 runs x 2,000 steps x 8 metrics load in under 10 s.

    .venv/bin/python benchmarks/analysis_load.py                  # fills (~100 s on 2 cores), then times
    .venv/bin/python benchmarks/analysis_load.py --db /tmp/b.db   # keep the store; reuse it next time
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paramcrop import sinks  # noqa: E402

METRICS = [sinks.TRAIN_LOSS, sinks.TRAIN_LR, sinks.TRAIN_CLIPS_PER_S, sinks.VIEW_IOU, sinks.VIEW_IOU_XY,
           sinks.VIEW_IOU_T, sinks.VIEW_CENTER_DISTANCE, sinks.VIEW_CENTER_DISTANCE_XY]
STUDY = "bench"


def fill(uri: str, root: Path, n_runs: int, n_steps: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    eid = client.create_experiment(STUDY, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(eid, tags={sinks.TAG_ROLE: "study", sinks.TAG_OBJECTIVE: sinks.EVAL_KNN_TOP1},
                               run_name=f"{STUDY}-study").info.run_id
    configs = [("random", None), ("paramcrop", "0.5"), ("paramcrop", "1.0"), ("paramcrop", "2.0")]
    rng = np.random.default_rng(0)
    steps = np.arange(n_steps)
    p = steps / max(1, n_steps - 1)
    t0 = time.perf_counter()
    for i in range(n_runs):
        method, strength = configs[i % len(configs)]
        seed = i // len(configs)
        params = {"crop.method": method, "steps": n_steps, "seed": seed, "framework.name": "simclr",
                  "backbone.name": "tiny3d"}
        if strength:
            params["crop.strength"] = strength
        run = client.create_run(eid, tags={sinks.TAG_ROLE: "trial", sinks.PARENT_RUN_TAG: parent,
                                           sinks.TAG_TRIAL: str(i)}, run_name=f"trial-{i}")
        rid = run.info.run_id
        lam = float(strength or 0)
        drop = 0.65 * lam / (lam + 0.5) if method != "random" else 0.0
        iou = 0.9 - drop * (1 - np.exp(-4 * p)) if method != "random" else np.full(n_steps, 0.45)
        dist = 1.0 - iou
        series = {
            sinks.TRAIN_LOSS: 5 * np.exp(-3 * p) + 1, sinks.TRAIN_LR: 0.1 * (1 + np.cos(np.pi * p)) / 2,
            sinks.TRAIN_CLIPS_PER_S: np.full(n_steps, 200.0),
            sinks.VIEW_IOU: iou, sinks.VIEW_IOU_XY: iou ** 0.7, sinks.VIEW_IOU_T: iou ** 0.3,
            sinks.VIEW_CENTER_DISTANCE: dist, sinks.VIEW_CENTER_DISTANCE_XY: dist * 0.8,
        }
        metrics = [Metric(k, float(v + rng.normal(0, 0.03)), 1_700_000_000_000 + int(s), int(s))
                   for k in METRICS for s, v in zip(steps, series[k])]
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        for j in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[j:j + 1000])
        knn = 0.4 + 0.1 * lam / (lam + 0.5) + rng.normal(0, 0.01)
        client.log_batch(rid, metrics=[Metric(sinks.EVAL_KNN_TOP1, knn, 1_700_000_000_000 + n_steps, n_steps)])
        client.set_terminated(rid)
        if i == 0 or (i + 1) % 10 == 0:
            print(f"  filled {i + 1}/{n_runs} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    client.set_terminated(parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--db", type=Path, help="SQLite file to fill (reused when it exists). [default: a temp dir]")
    ap.add_argument("--client", action="store_true", help="Also time get_metric_history in a thread pool (~20 s).")
    ap.add_argument("--plot", action="store_true", help="Also time the whole iou-curves analysis.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "mlflow.db"
        uri = f"sqlite:///{db.resolve()}"
        if not db.exists():
            print(f"filling {uri}: {args.runs} runs x {args.steps} steps x {len(METRICS)} metrics (log_batch)")
            t0 = time.perf_counter()
            fill(uri, db.parent.resolve(), args.runs, args.steps)
            print(f"filled in {time.perf_counter() - t0:.1f} s")

        from analysis.histories import load_histories
        from analysis.load import select
        from analysis.store import open_client

        t0 = time.perf_counter()
        client = open_client(uri)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        sel = select(client, study=STUDY)
        t_select = time.perf_counter() - t0
        t0 = time.perf_counter()
        hist = load_histories(client, sel.run_ids, METRICS, method="sql")
        t_sql = time.perf_counter() - t0
        print(f"open the store: {t_open:.2f} s")
        print(f"select runs: {t_select:.2f} s ({len(sel.runs)} runs)")
        print(f"histories, SQL bulk read: {t_sql:.2f} s ({len(hist):,} points)")
        total = t_open + t_select + t_sql
        if args.client:
            t0 = time.perf_counter()
            other = load_histories(client, sel.run_ids, METRICS, method="client", workers=8)
            print(f"histories, get_metric_history x 8 threads: {time.perf_counter() - t0:.2f} s "
                  f"({len(other):,} points)")
        if args.plot:
            from analysis.iou_curves import iou_curves
            from analysis.load import RunQuery

            t0 = time.perf_counter()
            iou_curves(RunQuery(study=STUDY, out=Path(tmp) / "out", log=False), client=client)
            print(f"iou-curves end to end (2 metrics, figure, files): {time.perf_counter() - t0:.2f} s")
        print(f"load total (open + select + all histories): {total:.2f} s -> {'OK' if total < 10 else 'TOO SLOW'} (< 10 s)")


if __name__ == "__main__":
    main()
