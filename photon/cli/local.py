"""`photon local`: a real federation on this machine, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from photon.cli.common import photon_errors_as_click
from photon.codecs import CODECS

if TYPE_CHECKING:
    from aggregator.strategies import StrategyName
    from photon.federation import Codec


@click.command()
@click.option("--silos", default=3, show_default=True, type=click.IntRange(1, 16))
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--local-steps",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Inner steps each silo trains per round (H).",
)
@click.option("--preset", default="tiny", show_default=True, help="Model preset.")
@click.option(
    "--codec",
    default="fp32",
    show_default=True,
    type=click.Choice(CODECS),
    help="How deltas travel.",
)
@click.option(
    "--outer",
    default="fedavg",
    show_default=True,
    type=click.Choice(["fedavg", "fedmom", "nesterov", "fedadam", "fedyogi"]),
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to put everything (default: a new temporary directory).",
)
@click.option("--timeout", default=1800.0, show_default=True, help="Give up after seconds.")
@photon_errors_as_click
def local(
    silos: int,
    rounds: int,
    local_steps: int,
    preset: str,
    codec: str,
    outer: str,
    workdir: Path | None,
    timeout: float,
) -> None:
    """Run a complete federation on this machine: a federation CA and certificates, per-silo
    data from Python's standard library (split by package, so silos differ), one aggregator
    and SILOS silo processes on loopback over mTLS. Prints a table per round and writes
    summary.json into the work directory.

    \b
    Examples:
      photon local
      photon local --silos 4 --rounds 8 --local-steps 100 --workdir runs/first
    """
    from photon.cli.localfed.run import LocalFederation, prepare_workdir
    from photon.cli.localfed.setup import LocalOptions

    opts = LocalOptions(
        silos=silos,
        rounds=rounds,
        local_steps=local_steps,
        preset=preset,
        codec=cast("Codec", codec),
        outer=cast("StrategyName", outer),
    )
    LocalFederation(prepare_workdir(workdir), opts, echo=click.echo, timeout_s=timeout).run()
