"""The ``podtask`` command."""

from __future__ import annotations

import typer

from podtask import __version__

app = typer.Typer(help="podtask: background tasks for Python on Kubernetes.", no_args_is_help=True)


@app.callback()
def root() -> None:
    """podtask: background tasks for Python on Kubernetes."""


@app.command()
def version() -> None:
    """Print the podtask version."""
    typer.echo(__version__)


def main() -> None:
    app()
