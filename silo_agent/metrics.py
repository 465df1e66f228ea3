"""Prometheus metrics of a silo agent, served on `[silo] metrics_listen`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SiloMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round = Gauge("photon_silo_round", "Round being worked on.", registry=r)
        self.step = Gauge("photon_silo_global_step", "Global inner step.", registry=r)
        self.loss = Gauge("photon_silo_train_loss", "Latest inner-step loss.", registry=r)
        self.global_version = Gauge(
            "photon_silo_global_version",
            "The aggregator's global version, as its last heartbeat reply said.",
            registry=r,
        )
        self.tokens_per_s = Gauge(
            "photon_silo_tokens_per_second", "Training throughput of the last round.", registry=r
        )
        self.bytes = Counter(
            "photon_silo_transfer_bytes", "Payload bytes moved.", ["direction"], registry=r
        )
        self.rounds = Counter(
            "photon_silo_rounds", "Rounds by upload outcome.", ["outcome"], registry=r
        )
