"""Closing a round: the pipeline that runs once `closing.decide_close` said close.

Outside the lock: hash the round's spooled updates (a corrupt one is dropped and its silo asked
again; the round stays open), aggregate them into the next version, journal the round closed
and open the next one, then evaluate the new version. A full disk anywhere leaves the round to
be closed again at the next tick (`closeout.DiskFullBackoff`); an evaluation that failed is
retried at the next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aggregator.audit import AuditLog
from aggregator.clocks import Clocks
from aggregator.integrity import SPOOL_CORRUPT, corrupt, drop_updates
from aggregator.roundstate import OpenRound, RoundState
from aggregator.store import Store, UpdateRow
from aggregator.uploads import UploadRegistry
from aggregator.verify import UpdateVerifier
from photon.federation import FederationSpec
from photon.logs import get_logger

if TYPE_CHECKING:
    from aggregator.globalmodel import GlobalModel

# The engine's logger: these lines were the engine's before the close-out had a module.
log = get_logger("aggregator.engine")


class RoundCloser:
    """Closes the open round of `state`; `open_next` (called under the lock) opens the next."""

    def __init__(
        self,
        state: RoundState,
        *,
        spec: FederationSpec,
        store: Store,
        model: GlobalModel,
        clocks: Clocks,
        uploads: UploadRegistry,
        audit: AuditLog,
        verifier: UpdateVerifier,
        evaluate: Callable[[int], None] | None,
        open_next: Callable[[], None],
    ) -> None:
        self.state = state
        self.spec = spec
        self.store = store
        self.model = model
        self.clocks = clocks
        self.uploads = uploads
        self.audit = audit
        self.verifier = verifier
        self._evaluate = evaluate
        self._open_next = open_next
        #: A version whose evaluation (and summary) a full disk deferred.
        self.eval_pending: int | None = None

    def close(self, op: OpenRound) -> None:
        """Aggregate, commit the version, journal the round closed. Retried whole after a full
        disk: the model restores its last checkpoint on a failed advance, and an advance that
        did commit (only the journal row failed) is not repeated. The caller set
        `state.aggregating`; this clears it."""
        started = time.monotonic()
        updates = [u for u in self.store.updates(op.row.round) if u.silo_id in op.row.selected]
        try:
            if self.model.version == op.row.round and self._drop_corrupt(op, updates):
                return
            self.verifier.reconcile()  # an audit line a full disk held back comes first
            if self.model.version == op.row.round:
                for row in self.model.advance(updates, op.row.round):
                    self.verifier.excluded(row, "left out: the aggregate with it was not finite")
                self.eval_pending = self.model.version
            self._record_closed(op, len(updates), started)
        except BaseException:
            with self.state.cond:
                self.state.aggregating = False
            raise
        self.run_evaluate()

    def _drop_corrupt(self, op: OpenRound, updates: list[UpdateRow]) -> bool:
        """Updates whose spool file fails its digest are dropped and their silos asked again;
        the round stays open. True if any was dropped."""
        bad = corrupt(updates)  # hashing runs outside the lock
        with self.state.cond:
            drop_updates(self.store, self.audit, bad, SPOOL_CORRUPT)
            op.reported -= {u.silo_id for u in bad}
            if bad:
                self.state.aggregating = False
                self.state.cond.notify_all()
            return bool(bad)

    def run_evaluate(self) -> None:
        """Evaluate the version pending evaluation, if it is still the current one."""
        version, self.eval_pending = self.eval_pending, None
        if self._evaluate is None or version != self.model.version:
            return
        try:
            self._evaluate(version)
        except BaseException:
            self.eval_pending = version  # tried again at the next tick
            raise

    def _record_closed(self, op: OpenRound, n_updates: int, started: float) -> None:
        with self.state.cond:
            self.store.close_round(op.row.round, self.clocks.wall(), "aggregated")
            self.state.open = None
            self.state.aggregating = False
            self.uploads.clean_closed_rounds(before=self.model.version)
            log.info(
                "round_closed",
                round=op.row.round,
                version=self.model.version,
                updates=n_updates,
                aggregate_s=round(time.monotonic() - started, 3),
            )
            if self.model.version < self.spec.rounds:
                self._open_next()
            self.state.cond.notify_all()
