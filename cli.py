"""The ``paramcrop`` command line (Typer).

Heavy libraries (torch, mlflow, optuna, seaborn) are imported inside the commands so that
``paramcrop --help`` answers at once. Each command is a thin wrapper: the work lives in
``paramcrop/`` (library), ``studies/`` (Optuna + MLflow) and ``analysis/`` (plots).
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from studies import DEFAULT_STORAGE

# Before torch loads OpenMP: an idle OpenMP thread spins a short while (GOMP_SPINCOUNT 10000, tens of
# microseconds), then sleeps. On the 2-core machine a quickstart step took 150 ms this way and 179 ms
# with threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) when the process was alone, but 367 ms
# against 287 ms with two processes on the cores: so `study run --workers N` gives its workers
# PASSIVE (studies/commands.py worker_env). A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

app = typer.Typer(
    name="paramcrop",
    help="Ablation suite for learned view generation (ParamCrop and friends) in video "
    "contrastive learning: Optuna studies, MLflow tracking, IoU/center-distance analyses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstring paragraphs are reflowed, not broken at the source's line ends (so no <placeholders>
    # in help texts: markdown takes them for HTML tags; write them in capitals, ./analysis-STUDY/)
    rich_markup_mode="markdown",
)


def _version_callback(value: bool) -> None:
    if value:
        from paramcrop import __version__

        typer.echo(f"paramcrop {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Learned 3D crops for video contrastive learning, studied with Optuna and tracked in MLflow."""
    _show_renamed_keys()


def _show_renamed_keys() -> None:
    """Show each old config key (``paramcrop.keys.RenamedKeyWarning``, a DeprecationWarning that
    Python hides by default) as one line on stderr, once per key; paramcrop is not imported for it (torch)."""
    import sys
    import warnings

    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        keys = sys.modules.get("paramcrop.keys")  # loaded: it raised the warning
        if keys is not None and issubclass(category, keys.RenamedKeyWarning):
            typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)
        else:
            shown(message, category, *args, **kwargs)

    warnings.filterwarnings("once", message="config key .* is deprecated", category=DeprecationWarning)
    warnings.showwarning = show


# --- shared option handling ----------------------------------------------------------------
def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise (2 = bad input, nothing created)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def collect_overrides(sets: list[str], **flags) -> dict:
    """``--set key=value`` entries plus the common flags (``None`` = not given) as dotted overrides."""
    from paramcrop.keys import parse_override

    overrides = dict(parse_override(s) for s in sets)
    dotted = {"data": "data.source", "backbone": "backbone.name", "framework": "framework.name",
              "head": "head.name", "crop": "crop.method", "strength": "crop.strength", "steps": "steps",
              "batch_size": "batch_size", "seed": "seed", "device": "device"}
    overrides.update({dotted[k]: v for k, v in flags.items() if v is not None})
    return overrides


def check_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use; an unknown scheme is refused before anything is created."""
    from urllib.parse import urlparse

    from paramcrop.sinks import default_tracking_uri, redact_url

    uri = uri or default_tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0]
    known = {"", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"}
    if scheme not in known:
        raise fail(f"tracking URI {redact_url(uri)!r} has an unknown scheme {scheme!r}; use e.g. sqlite:///mlflow.db, "
                   f"http://host:5000 or postgresql://user@host/db")
    return uri


# --- paramcrop train -------------------------------------------------------------------------
@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML training config (keys as in "
                                           "`paramcrop.config.TrainConfig`); flags and --set override it."),
    sets: list[str] = typer.Option([], "--set", help="Override any config key: --set crop.strength=0.5 "
                                   "(repeatable; values parsed as YAML)."),
    data: Optional[str] = typer.Option(None, help="Data source: synthetic, folder:DIR, ucf101:ROOT[:SPLIT], "
                                       "hmdb51:ROOT[:SPLIT], kinetics:CSV:ROOT. [default: synthetic]"),
    backbone: Optional[str] = typer.Option(None, help="tiny3d, r3d_18, mc3_18, r2plus1d_18, s3d. [default: tiny3d]"),
    framework: Optional[str] = typer.Option(None, help="simclr, moco, byol. [default: simclr]"),
    crop: Optional[str] = typer.Option(None, help="Crop method: random, cvrl, paramcrop, matched, curriculum, "
                                       "replay, hardest. [default: paramcrop]"),
    head: Optional[str] = typer.Option(None, help="Projection head: mlp, cate (augmentation-aware, CATE); its "
                                       "settings via --set head.depth=2 etc. [default: mlp]"),
    loss: list[str] = typer.Option([], "--loss", help="Add an auxiliary loss: region (soft region contrast), "
                                   "order (local-global temporal order); repeatable or comma-separated. Weight "
                                   "1 unless set: --set losses.region=0.5."),
    objective: list[str] = typer.Option([], "--objective", hidden=True, help="Deprecated name of --loss."),
    strength: Optional[float] = typer.Option(None, help="Adversarial strength lambda of a learned crop "
                                             "(crop.strength, >= 0)."),
    steps: Optional[int] = typer.Option(None, help="Training steps. [default: 300]"),
    batch_size: Optional[int] = typer.Option(None, help="Clips per step. [default: 32]"),
    seed: Optional[int] = typer.Option(None, help="Random seed. [default: 0]"),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI "
                                               "or sqlite:///mlflow.db]"),
    experiment: str = typer.Option("paramcrop-train", help="MLflow experiment to record the run in."),
    run_dir: Optional[Path] = typer.Option(None, help="Folder for checkpoints and run files. "
                                           "[default: paramcrop-runs/EXPERIMENT/RUN-NAME]"),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir from its checkpoint (same MLflow run)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Run one training run (no Optuna), tracked in MLflow: params, step metrics, evaluation, artifacts.

    Exit codes: 0 done, 1 failed, 2 bad input or nothing to resume from, 3 a full disk, 130 Ctrl-C, 143 SIGTERM.
    """
    from paramcrop.config import TrainConfig
    from paramcrop.keys import ConfigError

    try:
        base = TrainConfig.from_yaml(config.read_text()) if config else TrainConfig()
        overrides = collect_overrides(sets, data=data, backbone=backbone, framework=framework, head=head, crop=crop,
                                      strength=strength, steps=steps, batch_size=batch_size, seed=seed, device=device)
        if objective:
            typer.secho("warning: --objective is deprecated: read as --loss, write that instead", err=True,
                        fg=typer.colors.YELLOW)
        cfg = base.with_overrides(overrides).with_losses(loss + objective)
    except OSError as exc:
        raise fail(f"cannot read the config file: {exc}")
    except ConfigError as exc:
        raise fail(str(exc))
    uri = check_tracking_uri(tracking_uri)
    from studies.replay import resolve_train_source

    try:
        cfg = resolve_train_source(cfg, uri, Path("paramcrop-runs") / experiment)  # a replay's runs:/<id>
    except ValueError as exc:
        raise fail(str(exc))

    from studies.runs import run_training

    code = run_training(cfg, tracking_uri=uri, experiment=experiment, run_dir=run_dir, resume=resume,
                        progress=progress)
    raise typer.Exit(code)


# --- paramcrop data ----------------------------------------------------------------------------
study_app = typer.Typer(help="Optuna studies over crops, frameworks, backbones and adversarial strength; "
                        "every trial an MLflow run.", no_args_is_help=True)
app.add_typer(study_app, name="study")
STORAGE_HELP = (f"Optuna storage: a journal file (default ./{DEFAULT_STORAGE}, safe for several local "
                "workers) or an RDB URL such as postgresql://user:pass@host/db for workers on several hosts.")


@study_app.command("run")
def study_run(
    spec: str = typer.Argument("quickstart", help="A built-in spec name (see `paramcrop study spec`) or a YAML file."),
    name: Optional[str] = typer.Option(None, help="Study name (default: the spec's); the same name resumes it."),
    seeds: Optional[str] = typer.Option(None, help="A block of seeds instead of the spec's, e.g. 5-9 or 5,7: its "
                                        "own study (default name SPEC-seeds-5-9), analysed with the spec's "
                                        "other blocks by `analyze compare --experiment A --experiment B`."),
    only: Optional[str] = typer.Option(None, help="Only these values of the grid, labels as in the spec's compare "
                                       "(e.g. paramcrop,paramcrop-l0): a block of the spec's grid, its own "
                                       "study (default name SPEC-only-paramcrop+paramcrop-l0)."),
    n_trials: Optional[int] = typer.Option(None, min=1, help="Total finished trials wanted (default: the spec's, "
                                           "else the grid size)."),
    timeout: Optional[float] = typer.Option(None, min=1, help="Stop starting trials after this many seconds."),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db]"),
    data: Optional[str] = typer.Option(None, help="Data source for every trial (overrides the spec's)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    sets: list[str] = typer.Option([], "--set", help="Override a config key in every trial: --set steps=50."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    register: Optional[str] = typer.Option(None, "--register", metavar="NAME", help="Then register the best "
                                           "trial's backbone in the MLflow model registry as model NAME (a new "
                                           "version; see `paramcrop study register`)."),
    workers: int = typer.Option(1, min=1, help="Run this many worker processes on the study (each pinned to one "
                                "GPU when several are visible), with one combined progress view."),
    report: bool = typer.Option(True, "--report/--no-report", envvar="PARAMCROP_STUDY_REPORT",
                                help="When the study is done, write its page (`paramcrop analyze report`), log it "
                                "to the parent run and print where to open it."),
) -> None:
    """Run (or resume) an Optuna study; every trial is a child MLflow run under the study's parent run.

    Exit codes: 0 done, 1 no trial completed, the tracking store or the study storage stayed down or
    --register failed, 2 bad spec or arguments (nothing created), 3 a full disk, 130 Ctrl-C, 143 SIGTERM.
    """
    from paramcrop.keys import ConfigError
    from studies.spec import SpecError, load_spec, parse_seeds, seeds_label

    try:
        loaded = load_spec(spec)
        if seeds is not None:
            loaded.seeds = parse_seeds(seeds)
            loaded.name = f"{loaded.name}-seeds-{seeds_label(loaded.seeds)}"
        if only is not None:
            labels = [x.strip() for x in only.split(",") if x.strip()]
            loaded.keep_only(labels)
            loaded.name = f"{loaded.name}-only-{'+'.join(labels)}"
        if name:
            loaded.name = name
        overrides = collect_overrides(sets, data=data, device=device)
        if overrides:  # validate them on the spec's base config before anything is created
            loaded.base_config().with_overrides(overrides)
    except (SpecError, ConfigError) as exc:
        raise fail(str(exc))
    uri = check_tracking_uri(tracking_uri)

    from studies.commands import run_study

    if register is not None and not register.strip():
        raise fail("--register needs a model name")
    if workers > 1:
        from studies.commands import run_workers

        child_args = [spec, *(["--name", name] if name else []), *(["--seeds", seeds] if seeds else []),
                      *(["--only", only] if only else []),
                      *(["--n-trials", str(n_trials)] if n_trials else []),
                      *(["--timeout", str(timeout)] if timeout else []), *(["--storage", storage] if storage else []),
                      "--tracking-uri", uri, *(["--data", data] if data else []),
                      *(["--device", device] if device else []), *(a for s in sets for a in ("--set", s)),
                      "--no-report"]
        code = run_workers(loaded, child_args, workers, storage=storage, tracking_uri=uri, n_trials=n_trials,
                           timeout=timeout, overrides=overrides, progress=progress, register=register)
    else:
        code = run_study(loaded, storage=storage, tracking_uri=uri, n_trials=n_trials, timeout=timeout,
                         overrides=overrides, progress=progress, register=register)
    if report and code == 0:
        _study_report(loaded.name, uri)
    raise typer.Exit(code)


def _study_report(study: str, uri: str) -> None:
    """The finished study's page (:mod:`analysis.page`): written, logged, its path and its UI link printed."""
    from analysis.errors import AnalysisError
    from analysis.load import RunQuery
    from analysis.page import HTML_NAME, report_page
    from paramcrop.sinks import redact_url
    from studies.tracking import run_url

    try:
        report = report_page(RunQuery(study=study, tracking_uri=uri))
    except AnalysisError as exc:
        typer.secho(f"warning: no report: {exc}", err=True, fg=typer.colors.YELLOW)
        return
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    sel = report.data["selection"]
    flag = "" if uri == "sqlite:///mlflow.db" else f" --tracking-uri {redact_url(uri)}"
    typer.echo(f"report:   {report.data['html']} (and .md)")
    if report.logged_to:
        typer.echo(f"          {run_url(sel.experiment_ids[0], sel.parent_run_id, HTML_NAME)}  (with paramcrop ui{flag})")


@study_app.command("register")
def study_register(
    study: str = typer.Argument(..., help="Study name."),
    name: str = typer.Argument(..., help="Registered model name (created when missing; each call adds a version)."),
    trial: Optional[int] = typer.Option(None, min=0, help="Register this (complete) trial instead of the best one; "
                                        "needed for a multi-objective study."),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db]"),
) -> None:
    """Register the best trial's backbone (its run's `backbone` model) in the MLflow model registry as NAME.

    The model version is tagged with the study, the trial and its objective value. Exit codes: 0 registered,
    1 it could not be (no complete trial, no backbone model), 2 no such study."""
    uri = check_tracking_uri(tracking_uri)
    from studies.commands import register_study

    raise typer.Exit(register_study(study, name, trial=trial, storage=storage, tracking_uri=uri))


@study_app.command("list")
def study_list(storage: Optional[str] = typer.Option(None, help=STORAGE_HELP)) -> None:
    """The studies in the storage: trials by state and the best objective."""
    from studies.commands import list_studies

    raise typer.Exit(list_studies(storage))


@study_app.command("show")
def study_show(
    name: str = typer.Argument(..., help="Study name."),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    format: str = typer.Option("table", "--format", help="table, csv or json."),
) -> None:
    """One study's trials: number, state, params, objective, duration, MLflow run id."""
    if format not in ("table", "csv", "json"):
        raise fail(f"--format must be table, csv or json, got {format!r}")
    from studies.commands import show_study

    raise typer.Exit(show_study(name, storage, format))


@study_app.command("spec")
def study_spec(name: Optional[str] = typer.Argument(None, help="Built-in spec to print (omit to list them).")) -> None:
    """Print a built-in study spec as YAML (copy it, edit it, run it with `paramcrop study run FILE`)."""
    from studies.spec import SPEC_DIR, builtin_names

    if name is None:
        typer.echo("\n".join(builtin_names()))
        return
    if name not in builtin_names():
        raise fail(f"no built-in spec {name!r}; built-in specs: {', '.join(builtin_names())}")
    typer.echo((SPEC_DIR / f"{name}.yaml").read_text(), nl=False)


@app.command("eval")
def eval_command(
    run_id: Optional[str] = typer.Argument(None, help="MLflow run id of a finished run (or use --study)."),
    data: Optional[str] = typer.Option(None, help="Data source to evaluate on [default: the run's own evaluation, "
                             "recomputed, its per-query predictions logged]: synthetic[:KEY=VALUE,...], folder:DIR, "
                             "ucf101:ROOT[:SPLIT], hmdb51:ROOT[:SPLIT] (no SPLIT: all three and their mean), "
                             "kinetics:CSV:ROOT."),
    study: Optional[str] = typer.Option(None, help="Evaluate this study's trial runs (all, or --trial / --best)."),
    trial: Optional[int] = typer.Option(None, min=0, help="With --study: only this trial number."),
    best: bool = typer.Option(False, help="With --study: only the best trial (single-objective studies)."),
    protocol: str = typer.Option("knn,linear,retrieval", help="Comma-separated: knn, linear, retrieval, finetune."),
    finetune_steps: Optional[int] = typer.Option(None, min=1, help="Fine-tuning steps for the finetune protocol "
                                                 "[default: the run's eval.finetune_steps]."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI "
                                               "or sqlite:///mlflow.db]"),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP + " Read for --best only."),
    own_split: bool = typer.Option(False, "--own-split", help="Without --data: recompute on the dataset's own "
                                   "validation and test videos (the evaluation before fresh draws), logged as "
                                   "eval/own-split/... beside the run's own."),
) -> None:
    """Evaluate finished runs' backbones (loaded from MLflow) on any data source; the metrics
    eval/NAME/METRIC are logged back into each run and printed as a table. Without --data, each
    run's own final evaluation is recomputed (a run logged before evaluation draws existed on its
    dataset's own validation and test videos, as it was) and its per-query predictions are logged
    (predictions/val.csv, predictions/test.csv, for `paramcrop analyze variance` and `compare`);
    its metrics stay as logged, and a recomputed value that differs is reported.

    Exit codes: 0 done, 1 some run could not be evaluated, 2 bad arguments (nothing logged).
    """
    if bool(run_id) == bool(study):
        raise fail("give a RUN_ID or --study NAME (one of them)")
    if (trial is not None or best) and not study:
        raise fail("--trial and --best select within a --study")
    if trial is not None and best:
        raise fail("--trial and --best exclude each other")
    from paramcrop.config import TrainConfig
    from paramcrop.plan import resolve_device
    from paramcrop.dataset_names import dataset_name
    from studies.evaluate import parse_protocols

    try:
        if data is not None:
            dataset_name(data)
            if own_split:
                raise ValueError("--own-split recomputes a run's own evaluation: give it without --data")
        protocols = parse_protocols(protocol)
        resolve_device(TrainConfig().with_overrides({"device": device}).device)  # its spelling, then CUDA present
    except ValueError as exc:
        raise fail(str(exc))
    uri = check_tracking_uri(tracking_uri)

    from mlflow.exceptions import MlflowException
    from rich.console import Console

    from studies.evaluate import evaluate_own, evaluate_runs, print_rows, select_runs
    from studies.tracking import TrackingUnavailable, open_tracking_store

    console = Console()
    try:
        client = open_tracking_store(uri)
        runs = select_runs(client, run_id=run_id, study=study, trial=trial, best=best, storage=storage)
        if data is None:
            console.print(f"recomputing the own evaluation of {len(runs)} run(s)", highlight=False)
            rows = evaluate_own(client, runs, device=device, own_split=own_split)
        else:
            console.print(f"evaluating {len(runs)} run(s) on {data} ({', '.join(protocols)})", highlight=False)
            rows = evaluate_runs(client, runs, data, protocols, device=device, finetune_steps=finetune_steps)
    except TrackingUnavailable as exc:
        raise fail(str(exc), 1)
    except (ValueError, KeyError, MlflowException) as exc:  # an unknown run or study, a bad source root
        raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    print_rows(rows, console)
    raise typer.Exit(1 if any(r.error for r in rows) else 0)


@app.command()
def ui(
    port: int = typer.Option(5000, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 127.0.0.1 keeps it private to this machine."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Print this experiment's (a study's "
                                             "name, or a train --experiment) runs page."),
) -> None:
    """Start the MLflow UI on the same tracking store (every run, param, metric and figure)."""
    import subprocess
    import sys

    uri = check_tracking_uri(tracking_uri)
    from paramcrop.sinks import redact_url

    page = f"http://{host}:{port}"
    if experiment:
        from studies.tracking import TrackingUnavailable, call, open_tracking_store, runs_url

        try:
            found = call(open_tracking_store(uri).get_experiment_by_name, experiment)
        except (TrackingUnavailable, ValueError) as exc:
            raise fail(str(exc), 1)
        if found is None:
            raise fail(f"no experiment {experiment!r} in {redact_url(uri)}")
        page = runs_url(found.experiment_id, host, port)
    typer.echo(f"MLflow UI for {redact_url(uri)} at {page}  (Ctrl-C to stop)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    try:
        raise typer.Exit(subprocess.call(command))
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command()
def dashboard(
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    port: int = typer.Option(8080, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 127.0.0.1 keeps it private to this machine."),
) -> None:
    """Start Optuna's own dashboard (optuna-dashboard: history, importances, Pareto fronts) on the study storage.

    Needs the `dashboard` extra: pip install 'paramcrop[dashboard]'. Exit 2 when it is missing."""
    from studies.commands import run_dashboard

    raise typer.Exit(run_dashboard(storage, host, port))


data_app = typer.Typer(help="Build the embedded synthetic benchmark; check a video dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder to build into (the dataset goes in a "
                                       "versioned sub-folder). [default: $PARAMCROP_CACHE or ~/.cache/paramcrop]"),
    seed: Optional[int] = typer.Option(None, help="Generator seed. [default: 0]"),
    videos_per_class: Optional[int] = typer.Option(None, help="Videos per class. [default: 32]"),
    frames: Optional[int] = typer.Option(None, help="Frames per video. [default: 40]"),
    size: Optional[int] = typer.Option(None, help="Frame width and height in pixels, even. [default: 64]"),
    shapes: Optional[int] = typer.Option(None, help="Object shapes, 1-4; classes = shapes x motions. [default: 2]"),
    motions: Optional[int] = typer.Option(None, help="Motion directions, 1-8. [default: 4]"),
    test_fraction: Optional[float] = typer.Option(None, help="Fraction of each class in the test split. [default: 0.25]"),
    variant: Optional[str] = typer.Option(None, help="Background design: smooth, textures, patchwork, "
                                          "patchwork-drift, mosaic (see `paramcrop.data.synthetic.VARIANTS`). "
                                          "[default: mosaic]"),
    objects: Optional[int] = typer.Option(None, help="Objects per video, 1-8, all of the class's shape and motion. "
                                          "[default: 3]"),
) -> None:
    """Generate the synthetic benchmark (H.264 MP4 + manifest) into the cache, or find it there."""
    from paramcrop.data.synthetic import MANIFEST, SyntheticConfig, cache_root, ensure_synthetic

    given = dict(seed=seed, videos_per_class=videos_per_class, frames=frames, size=size, shapes=shapes,
                 motions=motions, test_fraction=test_fraction, variant=variant,
                 objects=objects)
    try:
        config = SyntheticConfig(**{k: v for k, v in given.items() if v is not None})
        target = cache_root(out) / config.dirname
        existed = (target / MANIFEST).is_file()
        spec = ensure_synthetic(config, out)
    except (ValueError, OSError) as exc:
        raise fail(str(exc))
    state = "already built" if existed else "built"
    typer.echo(f"{state}: {target}\n{len(spec.classes)} classes, {len(spec.train)} train + {len(spec.test)} test "
               f"videos of {config.frames} frames at {config.size}x{config.size}")


@data_app.command("check")
def data_check(
    target: str = typer.Argument(..., help="A folder with one sub-folder per class, or a data source string "
                                 "(synthetic, folder:DIR, ucf101:ROOT[:SPLIT], hmdb51:ROOT[:SPLIT], kinetics:CSV:ROOT)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache folder for the synthetic benchmark."),
) -> None:
    """Scan a dataset: readable videos per class, unreadable files and why, frame counts, resolutions.

    Exit 0 when usable (broken files are reported, not fatal), 1 when not, 2 on bad input."""
    from rich.console import Console

    from paramcrop.data import check_dataset, resolve_source
    from paramcrop.data.check import print_report

    source = f"folder:{target}" if Path(target).is_dir() else target
    try:
        spec = resolve_source(source, cache_dir=cache_dir)
    except (ValueError, OSError) as exc:
        raise fail(str(exc))
    report = check_dataset(spec, progress=True)
    print_report(report, Console())
    raise typer.Exit(0 if report.usable else 1)


# --- paramcrop analyze -------------------------------------------------------------------------
analyze_app = typer.Typer(
    help="Plots and tables from tracked runs in MLflow (importance: from the Optuna storage): a study "
    "(default: the most recent), an experiment (--experiment) or any runs (--runs). Files go to --out (default: ./analysis-STUDY/) "
    "as PNG + PDF + CSV and, for a study, to its parent run's artifacts (analysis/). "
    "Exit 2: unknown study/experiment/run/store or bad option; exit 1: no usable data.",
    no_args_is_help=True,
)
app.add_typer(analyze_app, name="analyze")

_URI_HELP = "MLflow tracking URI. (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
# The options that select tracked runs, shared by iou-curves, strength and table (analysis.load.RunQuery).
StudyOption = Annotated[Optional[str], typer.Option(
    "--study", help="Study name (= MLflow experiment name). (default: the study whose parent run started last)")]
ExperimentOption = Annotated[Optional[list[str]], typer.Option(
    "--experiment", help="Analyse the finished runs of this MLflow experiment (name or id; repeatable) "
    "instead of a study.")]
RunsOption = Annotated[Optional[list[str]], typer.Option(
    "--runs", help="Analyse these run ids (comma-separated; repeatable) instead of a study.")]
TrackingUriOption = Annotated[Optional[str], typer.Option("--tracking-uri", help=_URI_HELP)]
OutOption = Annotated[Optional[Path], typer.Option(
    "--out", help="Output folder. (default: ./analysis-STUDY/ or ./analysis-EXPERIMENT/, ./analysis-runs/ for --runs)")]
ObjectiveOption = Annotated[Optional[str], typer.Option(
    "--objective", help="Objective metric. (default: the study's paramcrop.objective tag, else eval/knn_top1)")]
LogOption = Annotated[bool, typer.Option(
    "--log/--no-log", help="Log the files as artifacts (analysis/) of the study's parent run.")]


def shared_options(param: str, options: dict, build):
    """Decorator factory for commands that share a group of options: ``options`` (name ->
    (Annotated type, default)) are added to the command's own, before them in ``--help``, and the
    command receives ``build(**their values)`` as its argument ``param``. Stackable."""
    def decorate(fn):
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != param]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                  for name, (annotation, default) in options.items()]

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: kwargs.pop(name) for name in options}
            return fn(**{param: build(**values)}, **kwargs)

        command.__signature__ = inspect.Signature(shared + own)
        return command
    return decorate


def _run_query(study, experiment, runs, tracking_uri, out, objective, log):
    from analysis.load import RunQuery

    return RunQuery(study=study, experiments=tuple(experiment or ()), run_ids=tuple(runs or ()), objective=objective,
                    tracking_uri=check_tracking_uri(tracking_uri), out=out, log=log)


RUN_QUERY_OPTIONS = {
    "study": (StudyOption, None), "experiment": (ExperimentOption, None), "runs": (RunsOption, None),
    "tracking_uri": (TrackingUriOption, None), "out": (OutOption, None), "objective": (ObjectiveOption, None),
    "log": (LogOption, True)}
run_query_command = shared_options("query", RUN_QUERY_OPTIONS, _run_query)
"""The analyze commands that read tracked runs: they get the run-selection options as ``query``,
an :class:`analysis.load.RunQuery`."""
run_selection_command = shared_options(
    "query", {k: v for k, v in RUN_QUERY_OPTIONS.items() if k != "objective"},
    functools.partial(_run_query, objective=None))
"""The same without ``--objective``, for a command with objective options of its own (sweet-spot)."""


def _curve_options(**values):
    from analysis.iou_curves import CurveOptions

    return CurveOptions(**values)


curve_options_command = shared_options("curve", {
    "x": (Annotated[str, typer.Option(
        "--x", help="x axis: progress = step / the run's last step (its steps param - 1, or its largest logged "
        "step if larger), so runs of different lengths align on [0, 1]; or step.")], "progress"),
    "hue": (Annotated[list[str], typer.Option(
        "--hue", help="Also name this param in every label, e.g. framework.name (repeatable). Runs are always "
        "split by every param that differs between them (seed aside).")], []),
    "separate": (Annotated[bool, typer.Option(
        "--separate", help="One figure per metric instead of one with a panel each.")], False),
    "points": (Annotated[int, typer.Option(
        "--points", help="Grid points along x (runs are interpolated onto them).")], 101),
    "level": (Annotated[float, typer.Option(
        "--level", help="Confidence level of the t-interval band over runs.")], 0.95),
    "skip_incomplete": (Annotated[bool, typer.Option(
        "--skip-incomplete", help="Skip runs without the metrics (default: stop with an error naming them).")],
        False)}, _curve_options)
"""The curve commands (iou-curves, learning-curves): they get the drawing options as ``curve``,
an :class:`analysis.iou_curves.CurveOptions`."""


def _analysis(fn, *args, **kwargs) -> None:
    """Run one analysis; AnalysisError -> message on stderr and its exit status (2 or 1)."""
    from analysis.errors import AnalysisError
    from analysis.report import print_report

    try:
        report = fn(*args, **kwargs)
    except AnalysisError as exc:
        raise fail(str(exc), exc.exit_code)
    print_report(report)


@analyze_app.command("iou-curves")
@run_query_command
@curve_options_command
def analyze_iou_curves(
    query,
    curve,
    axes: str = typer.Option("xyt", "--axes", help="xyt (view/iou, view/center_distance), xy (spatial) or t (temporal)."),
) -> None:
    """View IoU and center distance over training against the random-crop baseline.

    One line per configuration (every param that differs between the runs, seed aside): the mean over
    its runs (seeds/trials) with a 95% t-interval band. Writes iou-curves.png/.pdf and the plotted
    data iou-curves.csv (mean, std, lower, upper, n per configuration and x), prints a summary."""
    from analysis.iou_curves import iou_curves

    _analysis(iou_curves, query, curve, axes=axes)


@analyze_app.command("learning-curves")
@run_query_command
@curve_options_command
def analyze_learning_curves(
    query,
    curve,
    metric: list[str] = typer.Option(["eval/knn_top1"], "--metric", help="Metric to draw (repeatable), e.g. "
                                     "eval/knn_top1 (the online kNN, logged every eval.every steps), train/loss."),
) -> None:
    """Metrics over training (default: the online kNN top-1) against the random-crop baseline.

    Like iou-curves, for any logged metrics: one line per crop configuration, mean over runs with a
    95% t-interval band. Writes learning-curves.png/.pdf/.csv, prints a summary."""
    from analysis.iou_curves import learning_curves

    _analysis(learning_curves, query, curve, metrics=metric)


@analyze_app.command("generator")
@run_query_command
@curve_options_command
def analyze_generator(query, curve) -> None:
    """A learned crop's generator over training: view IoU, gradient and update norms, saturation, cube stds.

    One line per configuration of the runs that logged the diagnostics (learned crops; the others are named
    in a note): the mean over its runs (seeds) with a 95% t-interval band, like iou-curves. Writes
    generator.png/.pdf and the plotted data generator.csv, prints a summary with view/iou's late_share."""
    from analysis.generator import generator

    _analysis(generator, query, curve)


@analyze_app.command("strength")
@run_query_command
def analyze_strength(
    query,
    level: float = typer.Option(0.95, "--level", help="Confidence level of the error bars (t-interval over runs)."),
    logx: bool = typer.Option(False, "--logx", help="Logarithmic (symlog) strength axis."),
) -> None:
    """Objective against adversarial strength (crop.strength), per framework, head and auxiliary losses.

    Mean and 95% t-interval over runs per strength; the random crop's mean as a dashed reference
    line per setting. Writes strength.png/.pdf/.csv."""
    from analysis.strength import strength

    _analysis(strength, query, level=level, logx=logx)


BASELINE_HELP = ("Baseline configuration: its label as shown (in quotes), or KEY=VALUE conditions joined by commas "
                 "that one configuration meets, e.g. crop.method=random. (default: the one random-crop configuration)")


@analyze_app.command("table")
@run_query_command
def analyze_table(
    query,
    level: float = typer.Option(0.95, "--level", help="Confidence level of the t-interval in table.csv."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help=BASELINE_HELP),
) -> None:
    """Framework x backbone x head x losses x crop table of the objective (mean ± std over seeds, n).

    A configuration is every param that differs between the runs (all but the seed and run bookkeeping).
    Writes table.md, table.csv (with the 95% t-interval and the difference from the baseline, paired by seed)
    and a heatmap table.png/.pdf."""
    from analysis.tables import table

    _analysis(table, query, level=level, baseline=baseline)


@analyze_app.command("compare")
@run_query_command
def analyze_compare(
    query,
    baseline: Optional[str] = typer.Option(None, "--baseline", help=BASELINE_HELP + " A study whose spec declares "
                                           "comparisons (compare:) makes those unless --baseline is given."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the t-interval of the paired differences."),
    adjust: str = typer.Option("none", "--adjust", help="Multiplicity adjustment over this call's comparisons: none "
                               "or holm (Holm-adjusted p-values, each interval at the level of its Holm step)."),
) -> None:
    """Each configuration's difference from a baseline configuration (or the spec's declared comparisons), paired by seed.

    Per comparison: mean difference of the objective over the seeds both have, its 95% t-interval, the paired
    t-test's p-value (--adjust holm: Holm-adjusted), P(A > B) over the seeds with its Wilson interval, the
    hierarchical bootstrap interval (seeds, then queries, from the per-query predictions) and the number of pairs
    (unpaired seeds are left out, and said so). Writes compare.csv, compare.md and a forest plot compare.png/.pdf."""
    from analysis.compare import compare

    _analysis(compare, query, baseline=baseline, level=level, adjust=adjust)


@analyze_app.command("variance")
@run_query_command
def analyze_variance(query) -> None:
    """How much of the objective's spread over seeds is training and how much the evaluation's own sampling.

    Per configuration: the between-seed SD of the objective, the evaluation's sampling SE (bootstrap over each
    run's queries, from its per-query predictions), the training SD and the share of the between-seed variance
    each explains. Runs without per-query predictions are named with the command that writes them (exit 2).
    Writes variance.csv, variance.md and variance.png/.pdf."""
    from analysis.variance import variance

    _analysis(variance, query)


@analyze_app.command("power")
@run_query_command
def analyze_power(
    query,
    baseline: Optional[str] = typer.Option(None, "--baseline", help=BASELINE_HELP + " A study whose spec declares "
                                           "comparisons (compare:) plans those unless --baseline is given."),
    delta: float = typer.Option(0.03, "--delta", help="The difference to resolve: target half-width of the 95% "
                                "interval, and the true difference to detect."),
    power: float = typer.Option(0.8, "--power", help="Power wanted for detecting a true difference of --delta "
                                "(paired t-test, two-sided, alpha 0.05)."),
) -> None:
    """How many seeds each comparison needs, planned from the selected runs as a pilot (paired by seed).

    Per comparison with at least 3 pairs: the seeds at which the 95% t-interval of the paired difference has
    half-width <= --delta, and the seeds at which the paired t-test detects a true difference of --delta with
    --power (noncentral t). Writes power.csv and power.md."""
    from analysis.power import power_analysis

    _analysis(power_analysis, query, baseline=baseline, delta=delta, power=power)


@analyze_app.command("sweet-spot")
@run_selection_command
def analyze_sweet_spot(
    query,
    objective: list[str] = typer.Option([], "--objective", help="Objective metric, one panel each (repeatable or "
                                        "comma-separated). (default: eval/val/knn_top1 and eval/knn_top1)"),
    ceiling: Optional[float] = typer.Option(None, "--ceiling", help="Supervised ceiling of the test kNN "
                                            "(eval/knn_top1, from benchmarks/supervised_ceiling.py): a dashed line "
                                            "in that panel."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the t-intervals (error bars and the "
                                "paired differences)."),
) -> None:
    """Downstream accuracy against the measured view IoU (InfoMin's sweet spot), from matched random crops.

    The crop.method=matched configurations form a curve: x = their runs' mean measured view/iou over training,
    y = the objective's mean with a 95% t-interval over seeds. Every other configuration is a marker with an arrow
    from its start to its end IoU. The best matched level is compared with the easiest and the hardest, paired by
    seed. Writes sweet-spot.csv, sweet-spot.md and sweet-spot.png/.pdf."""
    from analysis.sweet_spot import sweet_spot

    _analysis(sweet_spot, query, objectives=objective, ceiling=ceiling, level=level)


@analyze_app.command("report")
@run_selection_command
def analyze_report(
    query,
    level: float = typer.Option(0.95, "--level", help="Confidence level of every interval on the page."),
) -> None:
    """One study's results as one page: spec, trials, summary table, comparisons, figures, and under each the
    command that reproduces it.

    Built from the other analyses (table and compare per objective, validation and test; iou-curves; sweet-spot
    with matched crops; generator with learned crops). Writes NAME.html (self-contained: figures embedded, no
    script) and NAME.md with its figures in NAME/; a study's are logged to its parent run as report.html and
    report.md, which the MLflow UI shows on the run's Artifacts tab."""
    from analysis.page import report_page

    _analysis(report_page, query, level=level)


@analyze_app.command("importance")
def analyze_importance(
    study: Optional[str] = typer.Option(None, "--study", help="Optuna study name. (default: the study whose "
                                        "first trial started last)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: a journal file path or an RDB "
                                          f"URL. (default: ./{DEFAULT_STORAGE})"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=_URI_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder. (default: ./analysis-STUDY/)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the fANOVA importance evaluator."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the files to the MLflow study's parent run "
                             "when the tracking store has it."),
) -> None:
    """Optuna parameter importances (fANOVA) and optimisation history of a study.

    Reads the Optuna storage, not MLflow. Writes importance.png/.pdf/.csv and
    optimization-history.png/.pdf/.csv."""
    from analysis.importance import importance

    _analysis(importance, tracking_uri=check_tracking_uri(tracking_uri), study=study, storage=storage, out=out,
              seed=seed, log=log)


@analyze_app.command("crops")
def analyze_crops(
    run: str = typer.Option(..., "--run", help="MLflow run id."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=_URI_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder. (default: ./analysis-EXPERIMENT/)"),
    cols: Optional[int] = typer.Option(None, "--cols", help="Images per row. (default: up to 3)"),
) -> None:
    """A run's crop visualisations (PNG artifacts under crops/) in one figure.

    Writes crops-RUNID.png/.pdf (RUNID: the first 8 characters of the run id) and a .csv listing the images
    in order of step."""
    from analysis.crops import crops

    _analysis(crops, tracking_uri=check_tracking_uri(tracking_uri), run_id=run, out=out, cols=cols)


if __name__ == "__main__":
    app()
