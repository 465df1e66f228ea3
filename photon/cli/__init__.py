"""The `photon` command line: thin commands that parse options and delegate.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import importlib

import click

from photon import __version__

# (module, attribute) of each top-level command or group, imported when the CLI starts.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("photon.cli.certs", "certs"),
    ("photon.cli.data", "data"),
    ("photon.cli.aggregator", "aggregator"),
    ("photon.cli.silo", "silo"),
    ("photon.cli.local", "local"),
    ("photon.cli.status", "status"),
    ("photon.cli.link", "link"),
    ("photon.cli.report", "report"),
    ("photon.cli.config", "config"),
    ("photon.cli.audit", "audit"),
    ("photon.cli.export", "export"),
    ("photon.cli.export", "generate"),
    ("photon.cli.train", "train"),
    ("photon.cli.plan", "plan"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="photon")
def main() -> None:
    """Photon: federated pre-training of language models across institutions.

    \b
    Try it on this machine (certificates, 3 silos, TLS, a few rounds):
      photon local
    """


def _register() -> None:
    for module_name, attr in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command group not built yet
        main.add_command(getattr(module, attr))


_register()
