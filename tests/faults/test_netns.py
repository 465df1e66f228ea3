"""The federation across real (virtual) network links: the aggregator and each silo in a network
namespace of their own, joined by veth pairs; one link shaped by the kernel (tbf) and taken
down mid-upload, then brought back. The run completes with the fault-free run's model.

Every address used lives inside namespaces this test creates (both ends of every veth), so no
traffic leaves them; the namespaces (and with them the veths) are deleted in `finally`.
Needs root and `ip netns`; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from photon.cli.localfed.launcher import Launcher
from photon.pki import init_federation
from tests.faults._support import (
    CHUNK_BYTES,
    assert_completed,
    event_times,
    faults_federation,
    run_to_end,
    start_aggregator,
    start_silo,
    utc_now,
)
from tests.harness import wait_for

pytestmark = pytest.mark.netns

SHAPE = ["tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"]
OUTAGE_S = 3.0


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Topology:
    """Namespace names; link i joins aggregator veth `agg_if(i)` (10.77.i.1) to silo i's
    veth `silo_if(i)` (10.77.i.2), a /30 of their own."""

    tag: str
    silos: int

    @property
    def agg_ns(self) -> str:
        return f"{self.tag}-agg"

    def silo_ns(self, i: int) -> str:
        return f"{self.tag}-s{i}"

    def agg_if(self, i: int) -> str:
        return f"{self.tag}a{i}"

    def silo_if(self, i: int) -> str:
        return f"{self.tag}s{i}"

    @staticmethod
    def agg_ip(i: int) -> str:
        return f"10.77.{i}.1"

    def namespaces(self) -> list[str]:
        return [self.agg_ns, *(self.silo_ns(i) for i in range(self.silos))]


def _build(topo: Topology) -> None:
    for ns in topo.namespaces():
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    for i in range(topo.silos):
        a, s = topo.agg_if(i), topo.silo_if(i)
        # Created inside the aggregator's namespace, the peer straight in the silo's.
        ip("-n", topo.agg_ns, "link", "add", a, "type", "veth", "peer", "name", s, "netns",
           topo.silo_ns(i))  # fmt: skip
        ip("-n", topo.agg_ns, "addr", "add", f"10.77.{i}.1/30", "dev", a)
        ip("-n", topo.silo_ns(i), "addr", "add", f"10.77.{i}.2/30", "dev", s)
        ip("-n", topo.agg_ns, "link", "set", a, "up")
        ip("-n", topo.silo_ns(i), "link", "set", s, "up")


@contextlib.contextmanager
def namespaces(silos: int) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    topo = Topology(tag=f"pk{os.getpid() % 100000}", silos=silos)
    try:
        try:
            _build(topo)
        except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot build network namespaces here: {exc}")
        yield topo
    finally:
        for ns in topo.namespaces():
            with contextlib.suppress(RuntimeError, FileNotFoundError):
                ip("netns", "del", ns)


def tx_bytes(ns: str, dev: str) -> int:
    info = json.loads(ip("-n", ns, "-s", "-j", "link", "show", "dev", dev))
    return int(info[0]["stats64"]["tx"]["bytes"])


def _federation(root: Path, topo: Topology) -> Launcher:
    fed = faults_federation(root, silos=topo.silos)
    hosts = [topo.agg_ip(i) for i in range(topo.silos)]
    init_federation(root / "certs", silos=list(fed.silos), hosts=hosts, force=True)
    fed.aggregator.server.listen = f"0.0.0.0:{fed.port}"
    for i, cfg in enumerate(fed.silos.values()):
        cfg.silo.aggregator = f"{topo.agg_ip(i)}:{fed.port}"
    return fed


def _shape(topo: Topology, i: int) -> None:
    """tbf both ways on link i: uploads leave the silo's veth, downloads the aggregator's."""
    ip("netns", "exec", topo.silo_ns(i), "tc", "qdisc", "add", "dev", topo.silo_if(i), "root",
       *SHAPE)  # fmt: skip
    ip("netns", "exec", topo.agg_ns, "tc", "qdisc", "add", "dev", topo.agg_if(i), "root", *SHAPE)


def test_federation_across_namespaces_survives_a_shaped_link_going_down(
    tmp_path: Path, reference_digest: str
) -> None:
    with namespaces(silos=2) as topo:
        fed = _federation(tmp_path, topo)
        _shape(topo, 0)
        ns0, dev0 = topo.silo_ns(0), topo.silo_if(0)
        try:
            start_aggregator(fed, prefix=["ip", "netns", "exec", topo.agg_ns])
            for i, name in enumerate(fed.silos):
                start_silo(fed, name, prefix=["ip", "netns", "exec", topo.silo_ns(i)])
            # Upstream of silo 0 carries little but its upload: past 20 chunks it is mid-way.
            base = tx_bytes(ns0, dev0)
            wait_for(lambda: tx_bytes(ns0, dev0) - base > 20 * CHUNK_BYTES, 180, "the upload")
            ip("-n", ns0, "link", "set", "dev", dev0, "down")
            down_at = utc_now()
            time.sleep(OUTAGE_S)
            ip("-n", ns0, "link", "set", "dev", dev0, "up")
            up_at = utc_now()
            codes = run_to_end(fed)
        finally:
            fed.stop_all()
        qdisc = ip("netns", "exec", ns0, "tc", "qdisc", "show", "dev", dev0)
    assert "tbf" in qdisc and "20Mbit" in qdisc, qdisc
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    trained = event_times(fed, "silo-0", "local_training_done")[0]
    accepted = event_times(fed, "silo-0", "upload_accepted")[0]
    assert trained < down_at < up_at < accepted, "the outage fell inside the round-0 upload"
