"""Update intake: checking an upload may proceed, accepting a received update, its status.

The servicer streams the bytes; this part decides whether a silo may upload for the open round
(`begin_upload`), verifies and journals a fully received update (`complete_upload`) and says
how far an upload got (`upload_status`). It shares the round state with the engine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.clocks import Clocks
from aggregator.handler import UploadState
from aggregator.membership import Membership
from aggregator.roundstate import OpenRound, RoundState
from aggregator.store import Store, UpdateRow
from aggregator.uploads import UploadRegistry, UploadSession
from aggregator.verify import UpdateVerifier
from photon.errors import AlreadyAccepted, NotAuthorized, PhotonError, RoundClosed, UpdateRejected
from photon.faults import crash_point
from photon.logs import get_logger
from photon.update import UpdateRecord

if TYPE_CHECKING:
    from aggregator.globalmodel import GlobalModel

# The engine's logger: these lines were the engine's before the intake had a module.
log = get_logger("aggregator.engine")


class UpdateIntake:
    """Accepts updates for the open round of `state`."""

    def __init__(
        self,
        state: RoundState,
        *,
        store: Store,
        model: GlobalModel,
        clocks: Clocks,
        members: Membership,
        uploads: UploadRegistry,
        verifier: UpdateVerifier,
        codec: str,
    ) -> None:
        #: The federation's codec: an update declaring another is refused at its header.
        self.codec = codec
        self.state = state
        self.store = store
        self.model = model
        self.clocks = clocks
        self.members = members
        self.uploads = uploads
        self.verifier = verifier

    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        with self.state.cond:  # counts as a heartbeat
            self.members.touch(silo)
        committed, complete = self.uploads.committed(silo, transfer_id)
        return UploadState(committed, complete, self.store.accepted(silo, transfer_id))

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        """Check an upload may proceed and return its (possibly resumed) receive session for a
        stream that starts at byte `offset`."""
        with self.state.cond:
            self.members.touch(silo)
            op = self.check_round(silo, update.round)
            if update.base_version != op.row.base_version:
                raise UpdateRejected(
                    f"update is based on version {update.base_version} but round {update.round} "
                    f"trains version {op.row.base_version}",
                    silo=silo,
                    round=update.round,
                )
            self._check_declared(silo, update)
            return self.uploads.open(silo, update, offset)

    def _check_declared(self, silo: str, update: UpdateRecord) -> None:
        """What the header says of the object, checked before a byte of it is received."""
        if update.size > self.model.max_update_bytes:
            raise UpdateRejected(
                f"declared size {update.size} exceeds the bound {self.model.max_update_bytes} "
                "for this model",
                silo=silo,
                round=update.round,
            )
        if update.codec and update.codec != self.codec:
            raise UpdateRejected(
                f"update is encoded with codec {update.codec!r} but the federation uses "
                f"{self.codec!r}",
                silo=silo,
                round=update.round,
            )

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
        with self.state.cond:
            op = self.check_round(silo, update.round, allow_reported=True)
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
                self._accepted(silo, update, norm)
            self.uploads.finish(update.transfer_id)
            self.state.cond.notify_all()
            return new

    def _accepted(self, silo: str, update: UpdateRecord, norm: float) -> None:
        """Audit a newly journaled update, keep the base version's eval it carries, log it."""
        self.verifier.accepted(silo, update, norm)
        if update.base_eval_loss is not None and math.isfinite(update.base_eval_loss):
            self.store.add_eval(update.base_version, silo, update.base_eval_loss, update.num_tokens)
        log.info(
            "update_accepted",
            silo=silo,
            round=update.round,
            bytes=update.size,
            tokens=update.num_tokens,
            train_loss=update.train_loss,
        )

    def check_round(self, silo: str, round_: int, allow_reported: bool = False) -> OpenRound:
        """The open round, if `silo` may send an update for `round_` now. Under the lock."""
        op = self.state.open
        if op is None or self.state.aggregating or op.row.round != round_:
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
