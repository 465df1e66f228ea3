"""`photon config example`: print a fully commented example config file."""

from __future__ import annotations

from pathlib import Path

import click

from photon.cli.common import photon_errors_as_click
from photon.cli.configexample import KINDS


@click.group()
def config() -> None:
    """Configuration files: commented examples generated from the config schema."""


@config.command(short_help="Print an example aggregator.toml or silo.toml.")
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the example to this file instead of printing it.",
)
@photon_errors_as_click
def example(kind: str, out_file: Path | None) -> None:
    """Print an example aggregator.toml or silo.toml: every key, its default and what it does.

    \b
    Examples:
      photon config example aggregator > aggregator.toml
      photon config example silo --out silo.toml
    """
    from photon.cli.configexample import render_example
    from photon.fsutil import atomic_write_bytes

    text = render_example(kind)
    if out_file is None:
        click.echo(text, nl=False)
        return
    atomic_write_bytes(out_file, text.encode())
    click.echo(f"wrote {out_file}", err=True)
