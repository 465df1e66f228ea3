"""An upload across a real shaped link: two network namespaces joined by a veth pair.

The client's end is shaped with `tc qdisc add dev X root tbf rate 50mbit burst 32kbit latency
400ms`; our stand-in server runs in the other namespace (`ip netns exec`), the real silo client
uploads ~30 MB across. Reported:

    netns_wire_over_link_rate  bytes that left the shaped interface during the upload (tc's
                               counter: payload + TLS + HTTP/2 + TCP/IP + Ethernet headers),
                               as bits per second of upload time, ÷ the tbf rate
    goodput_over_link_rate     object bits per second of upload time ÷ the tbf rate

Needs root and `ip netns`; otherwise the number is null and `netns_reason` says why. The
namespaces (and with them the veth pair) are always deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.transfer.env import (
    MB,
    NETNS_CLIENT_IP,
    NETNS_SERVER_IP,
    Child,
    Plan,
    random_file,
    wait_for,
)


def _run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    if out.returncode != 0:
        raise OSError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()[:300]}")
    return out.stdout


def _names() -> tuple[str, str, str, str]:
    tag = os.getpid() % 100_000
    return f"phbs{tag}", f"phbc{tag}", f"pvs{tag}", f"pvc{tag}"


def _setup(ns_s: str, ns_c: str, veth_s: str, veth_c: str, rate_mbit: int) -> None:
    _run("ip", "netns", "add", ns_s)
    _run("ip", "netns", "add", ns_c)
    _run("ip", "link", "add", veth_s, "type", "veth", "peer", "name", veth_c)
    _run("ip", "link", "set", veth_s, "netns", ns_s)
    _run("ip", "link", "set", veth_c, "netns", ns_c)
    for ns, dev, ip in ((ns_s, veth_s, NETNS_SERVER_IP), (ns_c, veth_c, NETNS_CLIENT_IP)):
        _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
        _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run(
        "ip",
        "netns",
        "exec",
        ns_c,
        "tc",
        "qdisc",
        "add",
        "dev",
        veth_c,
        "root",
        "tbf",
        "rate",
        f"{rate_mbit}mbit",
        "burst",
        "32kbit",
        "latency",
        "400ms",
    )


def _teardown(*namespaces: str) -> None:
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15, check=False)


def _tc_sent(ns: str, dev: str) -> int:
    text = _run("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev)
    match = re.search(r"Sent (\d+) bytes", text)
    if match is None:
        raise OSError(f"no 'Sent N bytes' in tc output: {text[:200]}")
    return int(match.group(1))


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "not running as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found" if missing else None


def _upload_across(
    work: Path, certs: Path, plan: Plan, ns_s: str, ns_c: str, veth_c: str
) -> dict[str, Any]:
    src = work / "netns.bin"
    digest = random_file(src, plan.netns_bytes, seed=3)
    common = ["--certs", str(certs), "--chunk-bytes", str(plan.chunk_bytes)]
    port_file, result = work / "netns.port", work / "netns-result.json"
    server = Child(
        [
            "standin",
            *common,
            "--state",
            str(work / "netns-server"),
            "--listen",
            NETNS_SERVER_IP,
            "--port-file",
            str(port_file),
        ],
        work / "netns-server.log",
        prefix=("ip", "netns", "exec", ns_s),
    )
    try:
        port = int(server.wait_file(port_file, 120))
        sent0 = _tc_sent(ns_c, veth_c)
        budget = 120 + 4 * plan.netns_bytes * 8 / (plan.netns_rate_mbit * 1e6)
        with Child(
            [
                "upload",
                *common,
                "--target",
                f"{NETNS_SERVER_IP}:{port}",
                "--file",
                str(src),
                "--digest",
                digest,
                "--result",
                str(result),
            ],
            work / "netns-client.log",
            prefix=("ip", "netns", "exec", ns_c),
        ) as client:
            wait_for(lambda: client.proc.poll() is not None, budget, "the netns upload")
            if client.proc.returncode != 0 or not result.exists():
                raise OSError(f"netns upload failed:\n{client.tail()}")
        sent = _tc_sent(ns_c, veth_c) - sent0
    finally:
        server.stop()
        src.unlink(missing_ok=True)
    return {**json.loads(result.read_text()), "wire_bytes": sent}


def measure(work: Path, certs: Path, plan: Plan) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        return {"netns_wire_over_link_rate": None, "netns_reason": reason}
    ns_s, ns_c, veth_s, veth_c = _names()
    try:
        _setup(ns_s, ns_c, veth_s, veth_c, plan.netns_rate_mbit)
        r = _upload_across(work, certs, plan, ns_s, ns_c, veth_c)
    except (OSError, TimeoutError, RuntimeError) as exc:
        return {"netns_wire_over_link_rate": None, "netns_reason": str(exc)[:500]}
    finally:
        _teardown(ns_s, ns_c)
    rate = plan.netns_rate_mbit * 1e6
    seconds = float(r["seconds"])
    return {
        "netns_wire_over_link_rate": round(r["wire_bytes"] * 8 / seconds / rate, 3),
        "netns_detail": {
            "link": f"veth, tbf rate {plan.netns_rate_mbit}mbit burst 32kbit latency 400ms",
            "object_mb": round(plan.netns_bytes / MB, 1),
            "seconds": round(seconds, 2),
            "wire_bytes": r["wire_bytes"],
            "goodput_over_link_rate": round(r["bytes"] * 8 / seconds / rate, 3),
            "outcome": r["outcome"],
        },
    }
