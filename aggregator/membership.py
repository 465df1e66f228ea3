"""Who is in the federation and who is alive: joined, online, lost, left.

Not thread-safe on its own: the round engine calls it under its lock. Every state change is
written to the journal, so a restarted aggregator knows its silos (and presumes the ones that
were online alive until a heartbeat timeout passes without a call).

Liveness runs on the monotonic clock (`last_seen`); the journal's `last_seen` column is a
wall-clock record, never read back for a decision.
"""

from __future__ import annotations

from typing import Any

from aggregator.clocks import Clocks
from aggregator.config import ServerConfig
from aggregator.store import Store
from photon.errors import NotAuthorized
from photon.logs import get_logger
from photon.names import silo_name_problem

log = get_logger("aggregator.membership")


class Membership:
    def __init__(self, store: Store, clocks: Clocks, server: ServerConfig) -> None:
        self.store, self.clocks, self.server = store, clocks, server
        self.state: dict[str, str] = {}
        #: Monotonic time of each silo's last call.
        self.last_seen: dict[str, float] = {}
        now = clocks.mono()
        for silo in store.silos():
            # After a restart a silo that was online is presumed alive for one heartbeat
            # timeout (mark_lost decides then): marking it lost at once would let a restarted
            # aggregator at the final version exit before its silos got their final task.
            self.state[silo.silo_id] = silo.state
            self.last_seen[silo.silo_id] = now

    def authorize(self, silo: str) -> None:
        _check_name(silo)
        allowlist = self.server.allowlist
        if allowlist and silo not in allowlist:
            raise NotAuthorized(f"silo {silo!r} is not in the aggregator's allowlist", silo=silo)

    def join(self, silo: str, num_train_tokens: int, agent_version: str = "") -> None:
        self.authorize(silo)
        self.store.upsert_silo(silo, self.clocks.wall(), "online", num_train_tokens)
        self.state[silo] = "joining"  # a new Join revives a silo that had left
        self.touch(silo)
        log.info(
            "silo_joined",
            silo=silo,
            train_tokens=num_train_tokens,
            agent_version=agent_version or "unknown",
        )

    def touch(self, silo: str) -> None:
        """A call from `silo`: it is alive (and must have joined)."""
        _check_name(silo)  # a journal from before names were checked may hold a bad one
        if silo not in self.state:
            raise NotAuthorized(f"silo {silo!r} has not joined; call Join first", silo=silo)
        self.last_seen[silo] = self.clocks.mono()
        if self.state[silo] == "left":
            return  # a straggling heartbeat after Leave does not bring it back
        if self.state[silo] != "online":
            if self.state[silo] == "lost":
                log.info("silo_back", silo=silo)
            self.state[silo] = "online"
            self.store.set_silo_state(silo, "online", self.clocks.wall())

    def leave(self, silo: str, reason: str) -> None:
        self.touch(silo)
        self.state[silo] = "left"
        self.store.set_silo_state(silo, "left", self.clocks.wall())
        log.info("silo_left", silo=silo, reason=reason)

    def mark_lost(self, timeout_s: float) -> list[str]:
        """Silos silent for longer than `timeout_s` become lost; returns them."""
        limit = self.clocks.mono() - timeout_s
        lost = [
            s
            for s, st in sorted(self.state.items())
            if st == "online" and self.last_seen.get(s, 0.0) < limit
        ]
        for silo in lost:
            self.state[silo] = "lost"
            self.store.set_silo_state(silo, "lost")
            log.warning(
                "silo_lost",
                silo=silo,
                timeout_s=timeout_s,
                policy="round continues without it; quorum decides",
            )
        return lost

    def online(self) -> list[str]:
        return sorted(s for s, st in self.state.items() if st == "online")

    def is_online(self, silo: str) -> bool:
        return self.state.get(silo) == "online"

    def any_online(self) -> bool:
        return any(st == "online" for st in self.state.values())

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clocks.mono()
        return [
            {"silo": s, "state": st, "last_seen_s_ago": round(now - self.last_seen.get(s, now), 1)}
            for s, st in sorted(self.state.items())
        ]


def _check_name(silo: str) -> None:
    problem = silo_name_problem(silo)
    if problem is not None:
        raise NotAuthorized(problem, silo=silo[:80])
