"""Metrics scrape, health service, progress output, and the docker-compose file is valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from photon import __version__
from photon.cli import main
from photon.tls import TLSFiles, channel_credentials
from silo_agent.progress import Progress
from tests.harness import free_port, make_federation, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text[:2000]}")


def test_aggregator_metrics_scrape_and_health(tmp_path: Path) -> None:
    port = free_port()
    fed = make_federation(tmp_path, silos=1, rounds=1)
    fed.aggregator.server.metrics_listen = f"127.0.0.1:{port}"
    try:
        fed.start_aggregator(exit_when_done=False)
        silo_port = free_port()
        fed.silos["silo-0"].silo.metrics_listen = f"127.0.0.1:{silo_port}"
        silo = fed.start_silo("silo-0")
        wait_for(
            lambda: _scrape(silo_port) is not None or silo.poll() is not None,
            120,
            "the silo's metrics endpoint",
        )
        silo_text = _scrape(silo_port) or ""
        assert silo.wait(timeout=180) == 0, fed.log("silo-0")
        status = CliRunner().invoke(
            main,
            ["status", "--aggregator", f"localhost:{fed.port}", "--certs", str(tmp_path / "certs")],
        )
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        creds = channel_credentials(TLSFiles.for_silo(tmp_path / "certs", "silo-0"))
        with grpc.secure_channel(f"localhost:{fed.port}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="photon.v1.Federation"), timeout=10
            )
        agg_log = fed.log("aggregator", tail=None)
    finally:
        fed.stop_all()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "photon_silo_round" in silo_text and "photon_silo_tokens_per_second" in silo_text
    assert "photon_silo_global_version" in silo_text
    assert _event(agg_log, "aggregator_listening")["metrics_port"] == port
    assert _event(agg_log, "silo_joined")["agent_version"] == __version__
    assert status.exit_code == 0, status.output
    assert "version 1/1" in status.output and "done" in status.output
    assert "silo-0" in status.output and "last eval loss" in status.output
    assert _metric(text, "photon_global_version") == 1.0
    assert _metric(text, 'photon_updates_total{verdict="accepted"}') == 1.0
    assert _metric(text, 'photon_transfer_bytes_total{direction="up"}') > 0
    assert _metric(text, 'photon_transfer_seconds_count{direction="up"}') >= 1
    assert _metric(text, "photon_eval_loss") > 0


def _event(log: str, name: str) -> dict[str, object]:
    """The first JSON log line of event `name`."""
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == name:
            return dict(json.loads(line))
    raise AssertionError(f"no {name} line in:\n{log[-2000:]}")


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


def test_progress_logs_periodically_without_a_terminal() -> None:
    from structlog.testing import capture_logs

    bar = Progress("train", 10, "step", interactive=False, log_every_s=0.0)
    with capture_logs() as logs:
        for _ in range(3):
            bar.update(1, loss=2.5)
    bar.close()
    assert [e["event"] for e in logs] == ["train_progress"] * 3
    assert logs[-1]["done"] == 3 and logs[-1]["total"] == 10 and logs[-1]["loss"] == 2.5


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (apt-get install docker-compose)",
)
def test_docker_compose_file_is_valid() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
