"""`photon certs`: provision a federation's certificates (thin; the work is in photon.pki)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click
from click.decorators import FC

from photon import pki
from photon.errors import PKIError

_dir = click.Path(file_okay=False, path_type=Path)
_file = click.Path(dir_okay=False, path_type=Path)
_hosts = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="H",
    help="DNS name or IP the aggregator is reached at (repeat; default localhost, 127.0.0.1, ::1).",
)
_force = click.option("--force", is_flag=True, help="Overwrite existing files.")


def _days(default: int) -> Callable[[FC], FC]:
    return click.option(
        "--days",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help="Validity in days.",
    )


@contextlib.contextmanager
def _pki_errors() -> Iterator[None]:
    try:
        yield
    except PKIError as exc:
        raise click.ClickException(str(exc)) from exc


def _silos(value: str) -> int | list[str]:
    value = value.strip()
    return int(value) if value.isdigit() else [n.strip() for n in value.split(",") if n.strip()]


@click.group("certs")
def certs() -> None:
    """Certificates for a federation: a CA, the aggregator, one per silo.

    \b
    Everything on one machine (a test federation):
      photon certs init --silos 3 --out certs/
    A silo keeps its key and asks for a certificate:
      photon certs request uni-a --out certs/        (on the silo)
      photon certs sign uni-a.csr --ca certs/        (on the operator's machine)
    """


@certs.command("init")
@click.option("--silos", required=True, metavar="N|NAMES", help="A count, or names 'a,b,c'.")
@click.option("--out", "out_dir", required=True, type=_dir, help="Certificate folder.")
@_hosts
@_days(365)
@_force
def init_cmd(silos: str, out_dir: Path, hosts: Sequence[str], days: int, force: bool) -> None:
    """Make a CA, the aggregator's certificate and one per silo.

    \b
    Example:
      photon certs init --silos 3 --out certs/ --host agg.example.org
    """
    with _pki_errors():
        paths = pki.init_federation(
            out_dir, silos=_silos(silos), hosts=hosts or pki.DEFAULT_HOSTS, days=days, force=force
        )
    click.echo(f"CA:         {paths.ca_cert}  (keep {paths.ca_key.name} with the operator)")
    click.echo(f"aggregator: {paths.aggregator_cert}")
    for name, (cert, _key) in paths.silos.items():
        click.echo(f"silo {name}: {cert}")


@certs.command("init-ca")
@click.option("--out", "out_dir", required=True, type=_dir, help="Certificate folder.")
@click.option("--name", default="Photon Federation CA", show_default=True, help="CA subject.")
@_days(3650)
@_force
def init_ca_cmd(out_dir: Path, name: str, days: int, force: bool) -> None:
    """Make only the federation CA (ca.crt, ca.key).

    \b
    Example:
      photon certs init-ca --out certs/
    """
    with _pki_errors():
        cert = pki.init_ca(out_dir, name=name, days=days, force=force)
    click.echo(f"CA: {cert}")


@certs.command("issue")
@click.argument("kind", type=click.Choice(["aggregator", "silo"]))
@click.argument("name")
@click.option("--ca", "ca_dir", required=True, type=_dir, help="Folder with ca.crt and ca.key.")
@click.option("--out", "out_dir", type=_dir, help="Where to put them (default: the CA folder).")
@_hosts
@_days(365)
@_force
def issue_cmd(
    kind: pki.Kind,
    name: str,
    ca_dir: Path,
    out_dir: Path | None,
    hosts: Sequence[str],
    days: int,
    force: bool,
) -> None:
    """Make a key and certificate for the aggregator or a silo.

    \b
    Examples:
      photon certs issue aggregator aggregator --ca certs/ --host agg.example.org
      photon certs issue silo uni-a --ca certs/ --out uni-a-certs/
    """
    with _pki_errors():
        cert, key = pki.issue(
            ca_dir,
            kind,
            name,
            out_dir=out_dir,
            hosts=hosts or pki.DEFAULT_HOSTS,
            days=days,
            force=force,
        )
    click.echo(f"certificate: {cert}\nkey:         {key}")


@certs.command("request")
@click.argument("name")
@click.option("--out", "out_dir", required=True, type=_dir, help="The silo's certificate folder.")
@_force
def request_cmd(name: str, out_dir: Path, force: bool) -> None:
    """On a silo: make its key and a CSR (the key stays here).

    \b
    Example:
      photon certs request uni-a --out certs/
      # send certs/silos/uni-a.csr to the operator; put the returned uni-a.crt next to it
    """
    with _pki_errors():
        key, csr = pki.request(name, out_dir, force=force)
    click.echo(f"key: {key}  (stays on this machine)\nCSR: {csr}  (send it to the operator)")


@certs.command("sign")
@click.argument("csr", type=_file)
@click.option("--ca", "ca_dir", required=True, type=_dir, help="Folder with ca.crt and ca.key.")
@click.option("--out", type=_file, help="Certificate file (default: its place in the CA folder).")
@click.option(
    "--kind", type=click.Choice(["silo", "aggregator"]), default="silo", show_default=True
)
@_days(365)
@_force
def sign_cmd(
    csr: Path, ca_dir: Path, out: Path | None, kind: pki.Kind, days: int, force: bool
) -> None:
    """On the operator's machine: sign a silo's CSR.

    \b
    Example:
      photon certs sign uni-a.csr --ca certs/ --out uni-a.crt
      # send uni-a.crt and certs/ca.crt back to the silo
    """
    with _pki_errors():
        cert = pki.sign(ca_dir, csr, kind=kind, days=days, out=out, force=force)
    click.echo(f"certificate: {cert}")


@certs.command("show")
@click.argument("cert", type=_file)
@click.option(
    "--ca", type=click.Path(path_type=Path), help="Also verify against this CA (file or folder)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(cert: Path, ca: Path | None, as_json: bool) -> None:
    """Print a certificate's fields; with --ca, also verify it.

    Subject, issuer, serial, validity, SANs, EKU and SHA-256 fingerprint.

    \b
    Example:
      photon certs show certs/silos/silo-0.crt --ca certs/
    """
    with _pki_errors():
        info = pki.show(cert)
    problem = _verify(cert, ca) if ca is not None else None
    if ca is not None:
        info["verified"] = f"no: {problem}" if problem else "yes: signed by the CA, not expired"
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for field, value in info.items():
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            click.echo(f"{field + ':':<12} {text}")
    if problem:
        raise click.ClickException(problem)


def _verify(cert: Path, ca: Path) -> str | None:
    """Why `cert` does not check out against the CA at `ca` (a file or a folder), or None."""
    ca_file = pki.ca_paths(ca)[0] if ca.is_dir() else ca
    try:
        pki.check_certificate(cert.read_bytes(), ca_file.read_bytes())
    except PKIError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {exc.filename}: {exc.strerror}"
    return None
