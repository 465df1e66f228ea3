"""Real daemons as separate processes over mTLS on loopback."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import grpc
import pytest

from aggregator.audit import read_audit
from aggregator.privacy import PrivacyConfig
from photon.cli.localfed.launcher import Launcher
from photon.pki import init_federation
from photon.tls import TLSFiles, channel_credentials
from photon.v1 import federation_pb2 as pb
from photon.v1 import federation_pb2_grpc as pb_grpc
from tests.harness import make_federation, wait_for


def accepted_updates(fed: Launcher) -> Counter[tuple[str, int]]:
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None
    return Counter((e["silo"], e["round"]) for e in entries if e["verdict"] == "accepted")


def test_two_silos_complete_two_rounds_over_mtls(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=2, rounds=2)
    try:
        fed.start_aggregator()
        for name in fed.silos:
            fed.start_silo(name)
        codes = fed.wait_all(timeout=240)
    finally:
        fed.stop_all()
    assert codes == {"aggregator": 0, "silo-0": 0, "silo-1": 0}, fed.log("aggregator")
    summary = fed.summary()
    assert summary["version"] == 2 and summary["done"] is True
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(r["eval_loss"] is not None for r in summary["rounds"])
    assert summary["initial_eval_loss"] is not None
    assert Path(summary["checkpoint"]).name == "v000002.safetensors"
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in summary["rounds"])
    assert accepted_updates(fed) == Counter({(s, r): 1 for s in fed.silos for r in (0, 1)})
    entries, _ = read_audit(fed.state_dir / "audit.jsonl")
    assert all(e["signature"] for e in entries), "every update carries a signature"
    assert not list(fed.state_dir.rglob("*.partial")), "no stray partial files"
    downloads = [
        json.loads(line)
        for line in fed.log("silo-0", tail=None).splitlines()
        if '"global_downloaded"' in line
    ]
    assert [d["delta"] for d in downloads] == [False, True, True], (
        "version 0 in full, later versions as lossless deltas from the held version"
    )


def _join(address: str, creds: grpc.ChannelCredentials | None) -> grpc.RpcError:
    channel = (
        grpc.insecure_channel(address) if creds is None else grpc.secure_channel(address, creds)
    )
    with channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(pb.JoinRequest(), timeout=10)
    return info.value


def test_plaintext_foreign_ca_and_revoked_clients_are_refused(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=1)
    address = f"localhost:{fed.port}"
    foreign = init_federation(tmp_path / "foreign", silos=["silo-0"])
    try:
        fed.start_aggregator(exit_when_done=False)
        plaintext = _join(address, None)
        assert plaintext.code() == grpc.StatusCode.UNAVAILABLE
        stranger = _join(address, channel_credentials(TLSFiles.for_silo(foreign.root, "silo-0")))
        assert stranger.code() == grpc.StatusCode.UNAVAILABLE
        (tmp_path / "certs" / "revoked.txt").write_text("silo-0\n")
        revoked = _join(
            address, channel_credentials(TLSFiles.for_silo(tmp_path / "certs", "silo-0"))
        )
        assert revoked.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in (revoked.details() or "")
    finally:
        fed.stop_all()


def test_sigterm_then_restart_continues_without_losing_or_repeating_rounds(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, silos=2, rounds=4, local_steps=3)
    try:
        aggregator = fed.start_aggregator()
        for name in fed.silos:
            fed.start_silo(name)
        wait_for(lambda: fed.summary().get("version", 0) >= 1, 180, "the first round")
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=60) == 0, fed.log("aggregator")
        stopped_at = fed.summary()["version"]
        assert stopped_at < 4, "the test must interrupt the run mid-way"
        fed.start_aggregator()
        codes = fed.wait_all(timeout=300)
    finally:
        fed.stop_all()
    assert set(codes.values()) == {0}, fed.log("aggregator")
    summary = fed.summary()
    assert summary["version"] == 4
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    assert accepted_updates(fed) == Counter({(s, r): 1 for s in fed.silos for r in range(4)})
    log = fed.log("aggregator", tail=None)
    assert '"event": "checkpoint_loaded"' in log, "the restart resumed from the checkpoint"
    assert json.loads((fed.state_dir / "summary.json").read_text())["done"] is True


def test_central_dp_federation_reports_epsilon(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=2, rounds=2)
    fed.aggregator.privacy = PrivacyConfig(enabled=True, clip_norm=0.5, noise_multiplier=0.8)
    try:
        fed.start_aggregator()
        for name in fed.silos:
            fed.start_silo(name)
        codes = fed.wait_all(timeout=240)
    finally:
        fed.stop_all()
    assert set(codes.values()) == {0}, fed.log("aggregator")
    summary = fed.summary()
    privacy = summary["privacy"]
    assert privacy["rounds"] == 2 and privacy["noise_multiplier"] == 0.8
    eps = [r["epsilon"] for r in summary["rounds"]]
    assert 0 < eps[0] < eps[1] == pytest.approx(privacy["epsilon"])
    assert '"event": "round_record"' in fed.log("aggregator")
