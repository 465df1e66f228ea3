"""`photon status`: ask a running aggregator how the federation is doing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from photon.cli.common import photon_errors_as_click
from photon.humanize import human_bytes


@click.command()
@click.option("--aggregator", "address", required=True, help="host:port of the aggregator.")
@click.option(
    "--certs",
    "certs_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Federation certificate folder (ca.crt and silos/NAME.crt/.key).",
)
@click.option(
    "--name",
    default=None,
    help="Which certificate in --certs to use (a silo or "
    "operator name); default: the first one found.",
)
@click.option("--insecure", is_flag=True, help="Plaintext (only for --insecure aggregators).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status JSON.")
@photon_errors_as_click
def status(
    address: str, certs_dir: Path | None, name: str | None, insecure: bool, as_json: bool
) -> None:
    """Current round, silos online/lost with their last heartbeat, bytes per round, the last
    eval loss and the estimated time to finish.

    \b
    Example:
      photon status --aggregator localhost:50051 --certs certs --name silo-0
    """
    import grpc

    from photon.tls import TLSFiles, channel_credentials
    from photon.v1 import federation_pb2 as pb
    from photon.v1 import federation_pb2_grpc as pb_grpc

    if insecure:
        channel = grpc.insecure_channel(address)
        metadata: tuple[tuple[str, str], ...] = (("x-photon-silo", name or "operator"),)
    else:
        if certs_dir is None:
            raise click.UsageError("--certs is required unless --insecure")
        who = name or _first_identity(certs_dir)
        channel = grpc.secure_channel(
            address, channel_credentials(TLSFiles.for_silo(certs_dir, who))
        )
        metadata = ()
    try:
        reply = pb_grpc.FederationStub(channel).Status(
            pb.StatusRequest(), timeout=10, metadata=metadata
        )
    except grpc.RpcError as exc:
        raise click.ClickException(f"{address}: {exc.code().name}: {exc.details()}") from exc
    finally:
        channel.close()
    data = json.loads(reply.status_json)
    click.echo(json.dumps(data, indent=2) if as_json else render(data))


def _first_identity(certs_dir: Path) -> str:
    found = sorted((certs_dir / "silos").glob("*.crt"))
    if not found:
        raise click.UsageError(f"no certificates in {certs_dir / 'silos'}; pass --name")
    return found[0].stem


def render(s: dict[str, Any]) -> str:
    eta = "n/a" if s.get("eta_s") is None else f"{s['eta_s']:.0f}s"
    lines = [
        f"federation {s.get('federation')}: version {s['version']}/{s['rounds_planned']}, "
        f"{s['phase']}, ETA {eta}"
    ]
    if s.get("open_round") is not None:
        lines.append(
            f"open round {s['open_round']}: selected {', '.join(s['selected'])}; "
            f"reported {', '.join(s['reported']) or 'none'}; "
            f"deadline in {s['deadline_in_s']}s"
        )
    for silo in s.get("silos", []):
        lines.append(
            f"  {silo['silo']:<20} {silo['state']:<7} last seen {silo['last_seen_s_ago']}s ago"
        )
    last = s.get("last_eval_loss")
    lines.append(f"last eval loss: {'n/a' if last is None else f'{last:.4f}'}")
    if s.get("rounds"):
        lines.append(
            f"{'round':>5} {'eval loss':>9} {'bytes up':>9} {'bytes down':>10} {'seconds':>8}"
        )
        for r in s["rounds"]:
            ev = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.4f}"
            lines.append(
                f"{r['round']:>5} {ev:>9} {human_bytes(r['bytes_up']):>9} "
                f"{human_bytes(r['bytes_down']):>10} {r['seconds']:>8.1f}"
            )
    return "\n".join(lines)
