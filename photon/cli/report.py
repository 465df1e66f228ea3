"""`photon report`: PNG plots and a markdown summary of a run."""

from __future__ import annotations

from pathlib import Path

import click

from photon.cli.common import photon_errors_as_click, setup_logs


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder to write the report into [default: RUN_DIR/report].",
)
@photon_errors_as_click
def report(run_dir: Path, out_dir: Path | None) -> None:
    """Plot a run's eval loss, per-silo train loss and traffic, and write report.md.

    RUN_DIR is a `photon local --workdir` folder, an aggregator state_dir, or a summary.json.
    Prints the paths written, one per line.

    \b
    Example:
      photon local --workdir runs/try1
      photon report runs/try1            # -> runs/try1/report/report.md + 3 PNGs
      photon report runs/try1 --out /tmp/try1-report
    """
    from photon.report import make_report  # matplotlib loads only for this command

    setup_logs("auto", "warning")  # stdout carries only the paths written

    for path in make_report(run_dir, out_dir).paths():
        click.echo(str(path))
