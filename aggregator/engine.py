"""The round engine: membership, round selection, tasks, evals, the driver's tick.

It knows nothing of gRPC: it implements `FederationHandler`, which the servicer calls with the
silo id the auth interceptor verified and plain values, turning its `PhotonError`s into status
codes. It is composed of parts that share one `RoundState` (`aggregator.roundstate`): the
update intake (`aggregator.intake`) and the close-out pipeline (`aggregator.closer`). All
mutable state sits behind its one condition variable; long work (aggregating, evaluating,
streaming bytes) runs outside it. Every timeout (liveness, deadlines, waits) runs on the
monotonic clock; the journal keeps wall-clock records (`aggregator.clocks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.audit import AUDIT_HEAD, AuditLog
from aggregator.clocks import Clocks, remaining_from_record
from aggregator.closeout import DiskFullBackoff
from aggregator.closer import RoundCloser
from aggregator.config import AggregatorConfig
from aggregator.handler import Admission, Direction, TaskDecision, UploadState
from aggregator.intake import UpdateIntake
from aggregator.integrity import rewind
from aggregator.limits import upload_quota
from aggregator.membership import Membership
from aggregator.roundstate import OpenRound, RoundState
from aggregator.schedule import RoundSchedule
from aggregator.store import Store
from aggregator.uploads import UploadRegistry, UploadSession
from aggregator.verify import UpdateVerifier
from photon.diskspace import is_disk_full
from photon.errors import NotAuthorized, UpdateRejected
from photon.logs import get_logger
from photon.update import MAX_COUNT, UpdateRecord

if TYPE_CHECKING:
    from aggregator.globalmodel import GlobalModel, Published

log = get_logger("aggregator.engine")


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
        self.state = RoundState()
        self._backoff = DiskFullBackoff(self.clocks.mono)
        self.members = Membership(store, self.clocks, cfg.server)
        self.uploads = UploadRegistry(
            Path(cfg.server.state_dir) / "spool", upload_quota(cfg.server, model.max_update_bytes)
        )
        self.audit = AuditLog(
            Path(cfg.server.state_dir) / "audit.jsonl",
            anchor=lambda head: store.set_meta(AUDIT_HEAD, head),
        )
        self.verifier = UpdateVerifier(cfg.server, self.spec, model, store, self.audit)
        self._compose(evaluate)
        self._recover()

    def _compose(self, evaluate: Callable[[int], None] | None) -> None:
        """The parts that share `self.state`: intake, schedule, close-out."""
        self.intake = UpdateIntake(
            self.state,
            store=self.store,
            model=self.model,
            clocks=self.clocks,
            members=self.members,
            uploads=self.uploads,
            verifier=self.verifier,
            codec=self.spec.codec,
        )
        self.schedule = RoundSchedule(
            self.state,
            cfg=self.cfg,
            store=self.store,
            model=self.model,
            clocks=self.clocks,
            members=self.members,
        )
        self.closer = RoundCloser(
            self.state,
            spec=self.spec,
            store=self.store,
            model=self.model,
            clocks=self.clocks,
            uploads=self.uploads,
            audit=self.audit,
            verifier=self.verifier,
            evaluate=evaluate,
            open_next=self.schedule.open_round,
        )

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
                self.state.open = OpenRound(
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
        with self.state.cond:
            self.members.join(silo, num_train_tokens, agent_version)
            self.state.cond.notify_all()
        interval = max(1.0, self.cfg.rounds.heartbeat_timeout_s / 4)
        return Admission(spec_json=self.spec.to_json(), heartbeat_interval_s=interval)

    def heartbeat(self, silo: str) -> int:
        with self.state.cond:
            self.members.touch(silo)
            return self.model.version

    def leave(self, silo: str, reason: str) -> None:
        with self.state.cond:
            self.members.leave(silo, reason)
            self.state.cond.notify_all()

    # -- tasks ------------------------------------------------------------------------------
    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        end = time.monotonic() + max(0.0, wait_s)
        with self.state.cond:
            self.members.touch(silo)
            while True:
                decision = self._decide(silo)
                remaining = end - time.monotonic()
                if decision.kind != "wait" or remaining <= 0:
                    return decision
                self.state.cond.wait(timeout=min(remaining, 1.0))
                self.members.touch(silo)

    def _decide(self, silo: str) -> TaskDecision:
        version = self.model.version
        if version >= self.spec.rounds:
            if silo not in self._final_eval_reporters():
                return TaskDecision(kind="eval", base_version=version, round=version)
            return TaskDecision(kind="done", message="federation finished")
        op = self.state.open
        if op is None or self.state.aggregating:
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
        with self.state.cond:
            self.members.touch(silo)
            if version > self.model.version:
                raise UpdateRejected(f"version {version} does not exist yet", silo=silo)
            self.store.add_eval(version, silo, loss, tokens)
            self.state.cond.notify_all()

    # -- transfers --------------------------------------------------------------------------
    def download(self, version: int, have_version: int) -> Published | None:
        return self.model.download(version, have_version)

    def record_traffic(self, round_: int, silo: str, direction: Direction, n_bytes: int) -> None:
        self.store.add_traffic(round_, silo, direction, n_bytes)

    # -- updates (the intake) -----------------------------------------------------------------
    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        return self.intake.upload_status(silo, transfer_id)

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        return self.intake.begin_upload(silo, update, offset)

    def complete_upload(
        self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None = None
    ) -> bool:
        return self.intake.complete_upload(silo, update, path, peer_cert)

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
                exc, "closing a round" if self.state.open else "journaling", self.model.version
            )
            return
        self._backoff.succeeded("round driver")

    def _tick(self) -> None:
        to_close: OpenRound | None = None
        with self.state.cond:
            self._mark_lost()
            if self.state.open is None and self.model.version < self.spec.rounds:
                self.schedule.open_round()
            op = self.state.open
            if op is not None and not self.state.aggregating and self.schedule.should_close(op):
                self.state.aggregating = True
                to_close = op
        if to_close is not None:
            self.closer.close(to_close)
        if self.closer.eval_pending is not None:
            self.closer.run_evaluate()

    def _mark_lost(self) -> None:
        if self.members.mark_lost(self.cfg.rounds.heartbeat_timeout_s):
            self.state.cond.notify_all()

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A snapshot for operators: round, silos and their liveness."""
        with self.state.cond:
            now = self.clocks.mono()
            op = self.state.open
            phase = (
                "done"
                if self.model.version >= self.spec.rounds
                else "aggregating"
                if self.state.aggregating
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
        with self.state.cond:
            if self.model.version < self.spec.rounds or self.closer.eval_pending is not None:
                return False
            return not self.members.any_online()

    def wake(self) -> None:
        with self.state.cond:
            self.state.cond.notify_all()
