"""The ``paramcrop`` command line (Typer).

Heavy libraries (torch, mlflow, optuna, seaborn) are imported inside the commands so that
``paramcrop --help`` answers at once. Each command is a thin wrapper: the work lives in
``paramcrop/`` (library), ``studies/`` (Optuna + MLflow) and ``analysis/`` (plots).
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="paramcrop",
    help="Ablation suite for learned view generation (ParamCrop and friends) in video "
    "contrastive learning: Optuna studies, MLflow tracking, IoU/center-distance analyses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


if __name__ == "__main__":
    app()
