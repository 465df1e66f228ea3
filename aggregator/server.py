"""The aggregator daemon: wires config, journal, global model, engine and the gRPC server."""

from __future__ import annotations

import math
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.auth import SERVICE, FederationAuth
from aggregator.config import AggregatorConfig
from aggregator.driver import drive
from aggregator.engine import RoundEngine
from aggregator.evaluator import Evaluator
from aggregator.globalmodel import GlobalModel
from aggregator.limits import Limits
from aggregator.metrics import AggregatorMetrics
from aggregator.servicer import FederationServicer
from aggregator.store import Store
from aggregator.summary import AGGREGATOR_EVAL, build_summary, eval_by_version, write_summary
from photon.errors import ConfigError
from photon.federation import FederationSpec
from photon.fsutil import atomic_write_bytes
from photon.logs import get_logger
from photon.memory import release_large_allocations
from photon.metrics_http import serve_metrics
from photon.model import preset
from photon.pki import RevocationList, revocation_path
from photon.rlimits import connection_budget, raise_descriptor_limit
from photon.tls import TLSFiles, server_credentials
from photon.tokenizer import load_tokenizer
from photon.v1 import federation_pb2_grpc as pb_grpc
from photon.wire import grpc_options, server_connection_options

log = get_logger("aggregator.server")


def resolve_spec(spec: FederationSpec) -> None:
    """Fill in the derived parts of the spec: model config and tokenizer digest."""
    tokenizer = load_tokenizer(spec.tokenizer)
    spec.tokenizer_digest = tokenizer.digest()
    model = preset(spec.preset, vocab_size=tokenizer.vocab_size)
    if spec.training.seq_len > model.max_seq_len:
        raise ConfigError(
            f"federation.training.seq_len = {spec.training.seq_len} exceeds the "
            f"{spec.preset!r} preset's max_seq_len {model.max_seq_len}"
        )
    spec.model = model.to_dict()


class AggregatorDaemon:
    def __init__(self, cfg: AggregatorConfig) -> None:
        self.cfg = cfg
        release_large_allocations()
        state_dir = Path(cfg.server.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = state_dir / "summary.json"
        self.store = Store(state_dir / "journal.sqlite")
        resolve_spec(cfg.federation)
        self._check_same_federation()
        if cfg.privacy.enabled and cfg.privacy.seed == 0:
            log.warning(
                "privacy_seed_default",
                detail="privacy.seed is 0: whoever knows the "
                "seed can subtract the noise; set a secret seed",
            )
        self.model = GlobalModel(
            state_dir,
            cfg.federation,
            cfg.outer,
            keep_checkpoints=cfg.server.keep_checkpoints,
            privacy=cfg.privacy,
        )
        self.evaluator = self._make_evaluator()
        self.engine = RoundEngine(cfg, self.store, self.model, evaluate=self._evaluate)
        self.limits = Limits.for_aggregator(cfg)
        self.metrics = AggregatorMetrics(self.engine, self.store, self._last_eval)
        self.metrics_server: Any = None
        self.metrics_port: int | None = None
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port = 0

    def _check_same_federation(self) -> None:
        spec = self.cfg.federation
        stored = self.store.get_meta("federation_digest")
        if stored is None:
            self.store.set_meta("federation_digest", spec.digest())
            self.store.set_meta("federation_spec", spec.to_json().decode())
        elif stored != spec.digest():
            stored_json = (self.store.get_meta("federation_spec") or "").encode()
            changes = spec.changes_since(stored_json)
            if changes:
                raise ConfigError(
                    f"state directory {self.cfg.server.state_dir} belongs to a federation with a "
                    f"different [federation] spec ({'; '.join(changes)}); restore the original "
                    "values in the config or use a new server.state_dir"
                )
            # Same values, new spelling (a key added since with its default): adopt it.
            log.info("federation_spec_upgraded", state_dir=str(self.cfg.server.state_dir))
            self.store.set_meta("federation_digest", spec.digest())
            self.store.set_meta("federation_spec", spec.to_json().decode())

    def _make_evaluator(self) -> Evaluator | None:
        data_dir = self.cfg.eval.data_dir
        if data_dir is None:
            return None
        t = self.cfg.federation.training
        return Evaluator(
            data_dir,
            self.model.model_config,
            seq_len=t.seq_len,
            batch_size=t.batch_size,
            batches=self.cfg.eval.batches,
            tokenizer_digest=self.cfg.federation.tokenizer_digest,
        )

    def _evaluate(self, version: int) -> None:
        if self.evaluator is not None:
            loss, tokens = self.evaluator.loss(self.model.params)
            if math.isfinite(loss):
                self.store.add_eval(version, AGGREGATOR_EVAL, loss, tokens)
                log.info("global_eval", version=version, eval_loss=round(loss, 4), tokens=tokens)
            else:  # not stored: a NaN loss has no place in the journal or the summary
                log.error("global_eval_not_finite", version=version, eval_loss=str(loss))
        summary = build_summary(self.store, self.model, self.cfg.federation)
        write_summary(self.summary_path, summary)
        if summary["rounds"]:
            last = summary["rounds"][-1]
            log.info(
                "round_record",
                round=last["round"],
                eval_loss=last["eval_loss"],
                bytes_up=last["bytes_up"],
                bytes_down=last["bytes_down"],
                ddp_equivalent_bytes=last["ddp_equivalent_bytes"],
                epsilon=last["epsilon"],
            )

    # -- serving ----------------------------------------------------------------------------
    def _build_server(self) -> grpc.Server:
        """The gRPC server: the Federation service behind its auth interceptor, and health."""
        srv = self.cfg.server
        auth = FederationAuth(
            insecure=srv.insecure,
            revocations=self._revocations(),
            limits=self.limits,
            allowlist=srv.allowlist,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=srv.max_workers),
            options=grpc_options(srv.chunk_bytes) + self._connection_options(),
            interceptors=[auth],
        )
        servicer = FederationServicer(
            self.engine,
            chunk_bytes=srv.chunk_bytes,
            long_poll_s=self.cfg.rounds.long_poll_s,
            status=self.status,
            limits=self.limits,
            metrics=self.metrics,
        )
        pb_grpc.add_FederationServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> int:
        srv = self.cfg.server
        server = self._build_server()
        if srv.insecure:
            log.warning(
                "insecure_mode",
                detail="plaintext gRPC without client certificates; "
                "never use across a network you do not control",
            )
            self.port = server.add_insecure_port(srv.listen)
        else:
            assert srv.certs_dir is not None
            creds = server_credentials(TLSFiles.for_aggregator(srv.certs_dir))
            self.port = server.add_secure_port(srv.listen, creds)
        if self.port == 0:
            raise ConfigError(f"could not listen on {srv.listen}: address in use or invalid")
        server.start()
        self.server = server
        served = serve_metrics(srv.metrics_listen, self.metrics.registry)
        if served is not None:
            self.metrics_server, self.metrics_port = served
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if srv.port_file is not None:
            atomic_write_bytes(srv.port_file, str(self.port).encode())
        log.info(
            "aggregator_listening",
            port=self.port,
            version=self.model.version,
            rounds=self.cfg.federation.rounds,
            tls=not srv.insecure,
            metrics_port=self.metrics_port,
        )
        return self.port

    def serve(self, stop: threading.Event, *, exit_when_done: bool = False) -> None:
        """Run the round driver until `stop` is set (or the federation is done)."""
        if self.evaluator is not None and self.model.version not in self._evaluated():
            self._evaluate(self.model.version)
        else:
            write_summary(
                self.summary_path, build_summary(self.store, self.model, self.cfg.federation)
            )
        try:
            if drive(
                [self.engine.tick, self.limits.watchdog.sweep],
                stop,
                done=lambda: exit_when_done and self.engine.finished(),
            ):
                log.info(
                    "federation_done",
                    version=self.model.version,
                    checkpoint=str(self.model.checkpoint_path),
                )
        finally:
            self.shutdown()

    def _connection_options(self) -> list[tuple[str, int]]:
        """Bounds on unauthenticated connections, fitted under the raised descriptor limit."""
        srv = self.cfg.server
        budget = connection_budget(srv.max_connections, raise_descriptor_limit())
        log.info(
            "connection_limits",
            max_connections=budget,
            handshake_timeout_s=srv.handshake_timeout_s,
        )
        return server_connection_options(
            max_connections=budget, handshake_timeout_s=srv.handshake_timeout_s
        )

    def status(self) -> dict[str, Any]:
        """Engine snapshot plus the run record's per-round figures and an ETA."""
        summary = build_summary(self.store, self.model, self.cfg.federation)
        status: dict[str, Any] = {"federation": self.cfg.federation.name, **self.engine.status()}
        rounds = summary["rounds"]
        status["last_eval_loss"] = summary["final_eval_loss"]
        status["rounds"] = [
            {k: r[k] for k in ("round", "eval_loss", "bytes_up", "bytes_down", "seconds")}
            for r in rounds
        ]
        remaining = self.cfg.federation.rounds - self.model.version
        mean = sum(r["seconds"] for r in rounds) / len(rounds) if rounds else None
        status["eta_s"] = None if mean is None else round(mean * remaining, 1)
        return status

    def _revocations(self) -> RevocationList | None:
        certs = self.cfg.server.certs_dir
        return None if certs is None else RevocationList(revocation_path(certs))

    def _last_eval(self) -> float | None:
        evals = eval_by_version(self.store)
        return evals.get(self.model.version)

    def _evaluated(self) -> set[int]:
        return {v for v, src, _, _ in self.store.evals() if src == AGGREGATOR_EVAL}

    def shutdown(self, grace: float = 5.0) -> None:
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
        if self.server is not None:
            self.engine.wake()
            self.server.stop(grace).wait()
            self.server = None
        write_summary(self.summary_path, build_summary(self.store, self.model, self.cfg.federation))
        self.store.close()
        log.info("aggregator_stopped", version=self.model.version)
