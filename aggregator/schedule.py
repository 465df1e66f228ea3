"""The round schedule: opening rounds and applying the close decision.

Under the engine's lock, `open_round` opens the round of the current version for a seeded
sample of the online silos and journals it; `should_close` gathers the open round's facts,
asks the pure `closing.decide_close` and applies its answer, journaling an extended deadline.
Aggregating a round that should close is `aggregator.closer`'s.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import TYPE_CHECKING

from aggregator.clocks import Clocks
from aggregator.closing import Close, ExtendDeadline, RoundFacts, decide_close
from aggregator.config import AggregatorConfig
from aggregator.membership import Membership
from aggregator.roundstate import OpenRound, RoundState
from aggregator.store import RoundRow, Store
from photon.logs import get_logger

if TYPE_CHECKING:
    from aggregator.globalmodel import GlobalModel

# The engine's logger: these lines were the engine's before the schedule had a module.
log = get_logger("aggregator.engine")


class RoundSchedule:
    """Opens rounds into `state` and decides when its open round closes."""

    def __init__(
        self,
        state: RoundState,
        *,
        cfg: AggregatorConfig,
        store: Store,
        model: GlobalModel,
        clocks: Clocks,
        members: Membership,
    ) -> None:
        self.state = state
        self.cfg = cfg
        self.spec = cfg.federation
        self.store = store
        self.model = model
        self.clocks = clocks
        self.members = members

    def open_round(self) -> None:
        """Open the round of the current version for a seeded sample of the online silos, if
        enough are online. Under the lock."""
        online = self.members.online()
        round_ = self.model.version
        if len(online) < self._silos_to_open(round_):
            return
        k = self.cfg.rounds.silos_per_round or len(online)
        rng = random.Random(f"{self.spec.seed}:{round_}")  # noqa: S311 - sampling, not secrets
        selected = tuple(sorted(rng.sample(online, min(k, len(online)))))
        now, deadline_s = self.clocks.wall(), self.cfg.rounds.deadline_s
        row = RoundRow(
            round=round_,
            base_version=round_,
            selected=selected,
            opened_at=now,
            deadline_at=now + deadline_s,
            closed_at=None,
            outcome=None,
        )
        self.store.open_round(row)
        self.state.open = OpenRound(row=row, deadline_mono=self.clocks.mono() + deadline_s)
        log.info(
            "round_opened",
            round=round_,
            selected=list(selected),
            deadline_s=self.cfg.rounds.deadline_s,
        )
        self.state.cond.notify_all()

    def _silos_to_open(self, round_: int) -> int:
        """Online silos needed to open `round_`: `min_silos` before the first round (as
        documented on RoundsConfig); later, the quorum of `min_silos` (at least 1), so a
        federation that lost silos goes on with the rest instead of waiting forever."""
        rounds = self.cfg.rounds
        if round_ == 0:
            return rounds.min_silos
        return max(1, math.ceil(rounds.quorum * rounds.min_silos))

    def should_close(self, op: OpenRound) -> bool:
        """Whether `op` closes now (`closing.decide_close`), logging why it closes without
        some silos; a deadline passed below the quorum is extended instead. Under the lock."""
        selected = frozenset(op.row.selected)
        reported = frozenset(op.reported) & selected
        decision = decide_close(
            RoundFacts(
                selected=selected,
                reported=reported,
                pending_online=frozenset(
                    s for s in selected - reported if self.members.is_online(s)
                ),
                quorum=self.cfg.rounds.quorum,
                now=self.clocks.mono(),
                deadline_at=op.deadline_mono,
                deadline_s=self.cfg.rounds.deadline_s,
            )
        )
        if isinstance(decision, ExtendDeadline):
            self._extend_deadline(op, decision)
            return False
        if isinstance(decision, Close):
            if decision.reason == "lost":
                log.warning(
                    "round_closing_without",
                    round=op.row.round,
                    missing=list(decision.missing),
                    reason="lost",
                )
            elif decision.reason == "deadline":
                log.warning("round_deadline", round=op.row.round, missing=list(decision.missing))
            return True
        return False

    def _extend_deadline(self, op: OpenRound, ext: ExtendDeadline) -> None:
        """Journal the round's new deadline (as wall time), then adopt it (monotonic)."""
        until_wall = self.clocks.mono_to_wall(ext.until)
        self.store.extend_deadline(op.row.round, until_wall)
        op.row = dataclasses.replace(op.row, deadline_at=until_wall)
        op.deadline_mono = ext.until
        log.warning(
            "round_deadline_extended", round=op.row.round, reported=ext.reported, quorum=ext.quorum
        )
