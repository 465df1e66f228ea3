"""The round engine: membership, round selection, tasks, accepting updates, closing rounds.

It knows nothing of gRPC: it implements `FederationHandler`, which the servicer calls with the
silo id the auth interceptor verified and plain values, turning its `PhotonError`s into status
codes. All mutable state sits behind
one condition variable; long work (aggregating, evaluating, streaming bytes) runs outside it.
Every timeout (liveness, deadlines, waits) runs on the monotonic clock; the journal keeps
wall-clock records (`aggregator.clocks`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.audit import AUDIT_HEAD, AuditLog
from aggregator.clocks import Clocks, remaining_from_record
from aggregator.closeout import DiskFullBackoff
from aggregator.closing import Close, ExtendDeadline, RoundFacts, decide_close
from aggregator.config import AggregatorConfig
from aggregator.handler import Admission, Direction, TaskDecision, UploadState
from aggregator.integrity import SPOOL_CORRUPT, corrupt, drop_updates, rewind
from aggregator.limits import upload_quota
from aggregator.membership import Membership
from aggregator.store import RoundRow, Store, UpdateRow
from aggregator.uploads import UploadRegistry, UploadSession
from aggregator.verify import UpdateVerifier
from photon.diskspace import is_disk_full
from photon.errors import AlreadyAccepted, NotAuthorized, PhotonError, RoundClosed, UpdateRejected
from photon.faults import crash_point
from photon.logs import get_logger
from photon.update import MAX_COUNT, UpdateRecord

if TYPE_CHECKING:
    from aggregator.globalmodel import GlobalModel, Published

log = get_logger("aggregator.engine")


@dataclass(slots=True)
class _OpenRound:
    row: RoundRow
    #: The round's deadline on the monotonic clock (the journal holds it as wall time).
    deadline_mono: float
    reported: set[str] = field(default_factory=set)


class RoundEngine:
    """Drives rounds from `min_silos` joined to `federation.rounds` versions published."""

    def __init__(
        self,
        cfg: AggregatorConfig,
        store: Store,
        model: GlobalModel,
        *,
        clock: Callable[[], float] | None = None,
        clocks: Clocks | None = None,
        evaluate: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = cfg.federation
        self.store = store
        self.model = model
        # `clock` alone (tests) serves as both clocks; `clocks` injects them separately.
        self.clocks = clocks or (Clocks() if clock is None else Clocks.single(clock))
        self._evaluate = evaluate
        self._cond = threading.Condition()
        self._open: _OpenRound | None = None
        self._aggregating = False
        self._backoff = DiskFullBackoff(self.clocks.mono)
        #: A version whose evaluation (and summary) a full disk deferred.
        self._eval_pending: int | None = None
        self.members = Membership(store, self.clocks, cfg.server)
        self.uploads = UploadRegistry(
            Path(cfg.server.state_dir) / "spool", upload_quota(cfg.server, model.max_update_bytes)
        )
        self.audit = AuditLog(
            Path(cfg.server.state_dir) / "audit.jsonl",
            anchor=lambda head: store.set_meta(AUDIT_HEAD, head),
        )
        self.verifier = UpdateVerifier(cfg.server, self.spec, model, store, self.audit)
        self._recover()

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        now = self.clocks.wall()
        version = self.model.version
        rewind(self.store, self.audit, version)  # the journal may be ahead of the checkpoint
        for row in self.store.rounds():
            if row.round < version and row.closed_at is None:
                self.store.close_round(row.round, now, "recovered")
            elif row.round == version and row.closed_at is None:
                reported = {u.silo_id for u in self.store.updates(row.round)}
                left = remaining_from_record(row.deadline_at, now, self.cfg.rounds.deadline_s)
                self._open = _OpenRound(
                    row=row, deadline_mono=self.clocks.mono() + left, reported=reported
                )
                log.info(
                    "round_resumed", round=row.round, reported=sorted(reported), deadline_s=left
                )
        self.uploads.clean_closed_rounds(before=version)

    # -- membership -------------------------------------------------------------------------
    def join(
        self, silo: str, num_train_tokens: int, tokenizer_digest: str, agent_version: str = ""
    ) -> Admission:
        self.members.authorize(silo)
        if not 0 <= num_train_tokens < MAX_COUNT:
            raise UpdateRejected("num_train_tokens must be in [0, 2**62)", silo=silo)
        if tokenizer_digest and tokenizer_digest != self.spec.tokenizer_digest:
            raise NotAuthorized(
                f"tokenizer digest {tokenizer_digest[:12]} differs from the federation's "
                f"{self.spec.tokenizer_digest[:12]}; prepare data with tokenizer "
                f"{self.spec.tokenizer!r}",
                silo=silo,
            )
        with self._cond:
            self.members.join(silo, num_train_tokens, agent_version)
            self._cond.notify_all()
        interval = max(1.0, self.cfg.rounds.heartbeat_timeout_s / 4)
        return Admission(spec_json=self.spec.to_json(), heartbeat_interval_s=interval)

    def heartbeat(self, silo: str) -> int:
        with self._cond:
            self.members.touch(silo)
            return self.model.version

    def leave(self, silo: str, reason: str) -> None:
        with self._cond:
            self.members.leave(silo, reason)
            self._cond.notify_all()

    # -- tasks ------------------------------------------------------------------------------
    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        end = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            self.members.touch(silo)
            while True:
                decision = self._decide(silo)
                remaining = end - time.monotonic()
                if decision.kind != "wait" or remaining <= 0:
                    return decision
                self._cond.wait(timeout=min(remaining, 1.0))
                self.members.touch(silo)

    def _decide(self, silo: str) -> TaskDecision:
        version = self.model.version
        if version >= self.spec.rounds:
            if silo not in self._final_eval_reporters():
                return TaskDecision(kind="eval", base_version=version, round=version)
            return TaskDecision(kind="done", message="federation finished")
        op = self._open
        if op is None or self._aggregating:
            need = self.cfg.rounds.min_silos - len(self.members.online())
            why = f"waiting for {need} more silo(s)" if need > 0 else "aggregating"
            return TaskDecision(kind="wait", retry_after_s=1.0, message=why)
        if silo in op.row.selected and silo not in op.reported:
            return TaskDecision(
                kind="train",
                round=op.row.round,
                base_version=op.row.base_version,
                local_steps=self.spec.local_steps,
                global_step=op.row.round * self.spec.local_steps,
                deadline_s=max(0.0, op.deadline_mono - self.clocks.mono()),
            )
        why = "update received" if silo in op.reported else "not selected this round"
        return TaskDecision(kind="wait", round=op.row.round, retry_after_s=1.0, message=why)

    def _final_eval_reporters(self) -> set[str]:
        final = self.model.version
        return {src for v, src, _, _ in self.store.evals() if v == final}

    # -- evals ------------------------------------------------------------------------------
    def report_eval(self, silo: str, version: int, loss: float, tokens: int) -> None:
        if not math.isfinite(loss) or loss < 0:
            raise UpdateRejected(
                f"eval loss {loss!r} is not a finite non-negative number", silo=silo
            )
        if not 0 <= tokens < MAX_COUNT:
            raise UpdateRejected("tokens must be in [0, 2**62)", silo=silo)
        self.verifier.bounds.check_eval_tokens(tokens, silo=silo)
        with self._cond:
            self.members.touch(silo)
            if version > self.model.version:
                raise UpdateRejected(f"version {version} does not exist yet", silo=silo)
            self.store.add_eval(version, silo, loss, tokens)
            self._cond.notify_all()

    # -- transfers --------------------------------------------------------------------------
    def download(self, version: int, have_version: int) -> Published | None:
        return self.model.download(version, have_version)

    def record_traffic(self, round_: int, silo: str, direction: Direction, n_bytes: int) -> None:
        self.store.add_traffic(round_, silo, direction, n_bytes)

    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        self.heartbeat(silo)
        committed, complete = self.uploads.committed(silo, transfer_id)
        return UploadState(committed, complete, self.store.accepted(silo, transfer_id))

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        """Check an upload may proceed and return its (possibly resumed) receive session for a
        stream that starts at byte `offset`."""
        with self._cond:
            self.members.touch(silo)
            op = self._check_round(silo, update.round)
            if update.base_version != op.row.base_version:
                raise UpdateRejected(
                    f"update is based on version {update.base_version} but round {update.round} "
                    f"trains version {op.row.base_version}",
                    silo=silo,
                    round=update.round,
                )
            if update.size > self.model.max_update_bytes:
                raise UpdateRejected(
                    f"declared size {update.size} exceeds the bound {self.model.max_update_bytes} "
                    "for this model",
                    silo=silo,
                    round=update.round,
                )
            return self.uploads.open(silo, update, offset)

    def complete_upload(
        self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None = None
    ) -> bool:
        """Verify signature and contents of a fully received update and record it durably.
        True if newly accepted. A rejected update's bytes are deleted: it leaves no trace
        but its line in the audit log."""
        try:
            norm = self.verifier.verify(silo, update, path, peer_cert)
        except PhotonError:
            self.uploads.discard(update.transfer_id, path)
            raise
        with self._cond:
            op = self._check_round(silo, update.round, allow_reported=True)
            row = UpdateRow(
                silo_id=silo,
                update=update,
                path=str(path),
                accepted_at=self.clocks.wall(),
                norm=norm,
            )
            new = self.store.add_update(row)
            if new:
                crash_point("aggregator.update_recorded")
                op.reported.add(silo)  # journaled: counted even if its audit line fails
                self.verifier.accepted(silo, update, norm)
                if update.base_eval_loss is not None and math.isfinite(update.base_eval_loss):
                    self.store.add_eval(
                        update.base_version, silo, update.base_eval_loss, update.num_tokens
                    )
                log.info(
                    "update_accepted",
                    silo=silo,
                    round=update.round,
                    bytes=update.size,
                    tokens=update.num_tokens,
                    train_loss=update.train_loss,
                )
            self.uploads.finish(update.transfer_id)
            self._cond.notify_all()
            return new

    def _check_round(self, silo: str, round_: int, allow_reported: bool = False) -> _OpenRound:
        op = self._open
        if op is None or self._aggregating or op.row.round != round_:
            open_round = self.model.version
            raise RoundClosed(
                f"round {round_} is not open; the open round is {open_round} "
                "(call GetTask for the current task)",
                open_round=open_round,
                silo=silo,
                round=round_,
            )
        if silo not in op.row.selected:
            raise NotAuthorized(
                f"silo {silo!r} was not selected for round {round_}", silo=silo, round=round_
            )
        if silo in op.reported and not allow_reported:
            done = next(u for u in self.store.updates(round_) if u.silo_id == silo)
            raise AlreadyAccepted(
                f"an update from {silo!r} for round {round_} was already accepted "
                f"(digest {done.update.digest[:12]})",
                silo=silo,
                round=round_,
            )
        return op

    # -- the driver: liveness, opening and closing rounds -----------------------------------
    def tick(self) -> None:
        """One pass of housekeeping; called by the driver thread (and by tests). A full disk
        defers the pass (logged; tried again after a bounded back-off) and loses nothing:
        the journal and the last checkpoint are untouched. Any other error propagates."""
        if not self._backoff.ready():
            return
        try:
            self._tick()
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self._backoff.failed(
                exc, "closing a round" if self._open else "journaling", self.model.version
            )
            return
        self._backoff.succeeded("round driver")

    def _tick(self) -> None:
        to_close: _OpenRound | None = None
        with self._cond:
            self._mark_lost()
            if self._open is None and self.model.version < self.spec.rounds:
                self._open_round()
            op = self._open
            if op is not None and not self._aggregating and self._should_close(op):
                self._aggregating = True
                to_close = op
        if to_close is not None:
            self._close(to_close)
        if self._eval_pending is not None:
            self._run_evaluate()

    def _mark_lost(self) -> None:
        if self.members.mark_lost(self.cfg.rounds.heartbeat_timeout_s):
            self._cond.notify_all()

    def _open_round(self) -> None:
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
        self._open = _OpenRound(row=row, deadline_mono=self.clocks.mono() + deadline_s)
        log.info(
            "round_opened",
            round=round_,
            selected=list(selected),
            deadline_s=self.cfg.rounds.deadline_s,
        )
        self._cond.notify_all()

    def _silos_to_open(self, round_: int) -> int:
        """Online silos needed to open `round_`: `min_silos` before the first round (as
        documented on RoundsConfig); later, the quorum of `min_silos` (at least 1), so a
        federation that lost silos goes on with the rest instead of waiting forever."""
        rounds = self.cfg.rounds
        if round_ == 0:
            return rounds.min_silos
        return max(1, math.ceil(rounds.quorum * rounds.min_silos))

    def _should_close(self, op: _OpenRound) -> bool:
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

    def _extend_deadline(self, op: _OpenRound, ext: ExtendDeadline) -> None:
        """Journal the round's new deadline (as wall time), then adopt it (monotonic)."""
        until_wall = self.clocks.mono_to_wall(ext.until)
        self.store.extend_deadline(op.row.round, until_wall)
        op.row = dataclasses.replace(op.row, deadline_at=until_wall)
        op.deadline_mono = ext.until
        log.warning(
            "round_deadline_extended", round=op.row.round, reported=ext.reported, quorum=ext.quorum
        )

    def _close(self, op: _OpenRound) -> None:
        """Aggregate, commit the version, journal the round closed. Retried whole after a full
        disk: the model restores its last checkpoint on a failed advance, and an advance that
        did commit (only the journal row failed) is not repeated."""
        started = time.monotonic()
        updates = [u for u in self.store.updates(op.row.round) if u.silo_id in op.row.selected]
        try:
            if self.model.version == op.row.round and self._drop_corrupt(op, updates):
                return
            self.verifier.reconcile()  # an audit line a full disk held back comes first
            if self.model.version == op.row.round:
                for row in self.model.advance(updates, op.row.round):
                    self.verifier.excluded(row, "left out: the aggregate with it was not finite")
                self._eval_pending = self.model.version
            self._record_closed(op, len(updates), started)
        except BaseException:
            with self._cond:
                self._aggregating = False
            raise
        self._run_evaluate()

    def _drop_corrupt(self, op: _OpenRound, updates: list[UpdateRow]) -> bool:
        """Updates whose spool file fails its digest are dropped and their silos asked again;
        the round stays open. True if any was dropped."""
        bad = corrupt(updates)  # hashing runs outside the lock
        with self._cond:
            drop_updates(self.store, self.audit, bad, SPOOL_CORRUPT)
            op.reported -= {u.silo_id for u in bad}
            if bad:
                self._aggregating = False
                self._cond.notify_all()
            return bool(bad)

    def _run_evaluate(self) -> None:
        version, self._eval_pending = self._eval_pending, None
        if self._evaluate is None or version != self.model.version:
            return
        try:
            self._evaluate(version)
        except BaseException:
            self._eval_pending = version  # tried again at the next tick
            raise

    def _record_closed(self, op: _OpenRound, n_updates: int, started: float) -> None:
        with self._cond:
            self.store.close_round(op.row.round, self.clocks.wall(), "aggregated")
            self._open = None
            self._aggregating = False
            self.uploads.clean_closed_rounds(before=self.model.version)
            log.info(
                "round_closed",
                round=op.row.round,
                version=self.model.version,
                updates=n_updates,
                aggregate_s=round(time.monotonic() - started, 3),
            )
            if self.model.version < self.spec.rounds:
                self._open_round()
            self._cond.notify_all()

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A snapshot for operators: round, silos and their liveness."""
        with self._cond:
            now = self.clocks.mono()
            op = self._open
            phase = (
                "done"
                if self.model.version >= self.spec.rounds
                else "aggregating"
                if self._aggregating
                else "training"
                if op is not None
                else "waiting for silos"
            )
            return {
                "version": self.model.version,
                "rounds_planned": self.spec.rounds,
                "phase": phase,
                "open_round": None if op is None else op.row.round,
                "selected": [] if op is None else list(op.row.selected),
                "reported": [] if op is None else sorted(op.reported),
                "deadline_in_s": None if op is None else round(op.deadline_mono - now, 1),
                "silos": self.members.snapshot(),
            }

    # -- lifecycle ------------------------------------------------------------------------------
    def finished(self) -> bool:
        """The last round is aggregated and every silo that was online has left or got DONE."""
        with self._cond:
            if self.model.version < self.spec.rounds or self._eval_pending is not None:
                return False
            return not self.members.any_online()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
