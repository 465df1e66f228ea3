"""Prometheus metrics of the aggregator, served on `[server] metrics_listen`.

Most values are read at scrape time from the source of truth (engine, journal, verifier), so
they cannot drift from what the aggregator actually did; transfer durations are observed as
streams end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aggregator.engine import RoundEngine
from aggregator.store import Store


class _Snapshot(Collector):
    def __init__(
        self, engine: RoundEngine, store: Store, last_eval: Callable[[], float | None]
    ) -> None:
        self.engine, self.store, self.last_eval = engine, store, last_eval

    def collect(self) -> Iterator[Any]:
        status = self.engine.status()
        yield _gauge(
            "photon_global_version",
            "Global model version (rounds aggregated).",
            float(status["version"]),
        )
        yield _gauge(
            "photon_rounds_planned",
            "Rounds this federation will run.",
            float(status["rounds_planned"]),
        )
        silos = GaugeMetricFamily("photon_silos", "Known silos by state.", labels=["state"])
        states = [s["state"] for s in status["silos"]]
        for state in ("online", "lost", "left"):
            silos.add_metric([state], float(states.count(state)))
        yield silos
        traffic = CounterMetricFamily(
            "photon_transfer_bytes", "Payload bytes moved.", labels=["direction"]
        )
        totals = {"up": 0, "down": 0}
        for _, _, direction, nbytes in self.store.traffic():
            totals[direction] = totals.get(direction, 0) + nbytes
        for direction, nbytes in sorted(totals.items()):
            traffic.add_metric([direction], float(nbytes))
        yield traffic
        verdicts = CounterMetricFamily("photon_updates", "Updates by verdict.", labels=["verdict"])
        for verdict, count in sorted(self.engine.verifier.counts.items()):
            verdicts.add_metric([verdict], float(count))
        yield verdicts
        loss = self.last_eval()
        if loss is not None:
            yield _gauge("photon_eval_loss", "Global eval loss of the newest version.", loss)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class AggregatorMetrics:
    def __init__(
        self, engine: RoundEngine, store: Store, last_eval: Callable[[], float | None]
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Snapshot(engine, store, last_eval))
        self.transfer_seconds = Histogram(
            "photon_transfer_seconds",
            "Duration of Upload/Download streams.",
            ["direction"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800),
            registry=self.registry,
        )
