"""Verification of a fully received update: signature, reported numbers, contents, and norm.

Runs before anything of the update touches the journal or the aggregate. Every verdict, good or
bad, goes to the audit log; a rejected update's bytes are deleted by the caller.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from pathlib import Path

from aggregator.audit import AuditLog, read_audit
from aggregator.bounds import UpdateBounds
from aggregator.config import ServerConfig
from aggregator.store import Store, UpdateRow
from aggregator.validate import ModelShapes, validate_update
from photon.errors import PhotonError, UpdateRejected
from photon.federation import FederationSpec
from photon.signing import verify_digest
from photon.update import UpdateRecord

RECENT = 20
MIN_HISTORY = 3


class UpdateVerifier:
    def __init__(
        self,
        server: ServerConfig,
        spec: FederationSpec,
        model: ModelShapes,
        store: Store,
        audit: AuditLog,
    ) -> None:
        self.server, self.spec, self.model, self.audit = server, spec, model, audit
        self.store = store
        num_params = sum(math.prod(shape) for shape in model.shapes.values())
        self.bounds = UpdateBounds.of(server, spec, num_params)
        norms = [u.norm for u in store.all_updates() if u.norm is not None]
        self.recent: deque[float] = deque(norms[-RECENT:], maxlen=RECENT)
        entries, _ = read_audit(audit.path)
        self.counts: Counter[str] = Counter(str(e.get("verdict")) for e in entries)
        self._reconcile(store, entries)
        #: An audit line failed after its journal row may have been committed: the next
        #: `reconcile` must read the log and the journal (otherwise it has nothing to do).
        self._behind = False

    def verify(self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None) -> float:
        """The update's L2 norm, or UpdateRejected (recorded in the audit log)."""
        try:
            self._check_signature(silo, update, peer_cert)
            self.bounds.check_tokens(update.num_tokens, silo=silo, round_=update.round)
            norm = validate_update(path, self.model, self.spec)
            self.bounds.check_norm(norm, silo=silo, round_=update.round)
            self._check_norm(silo, update.round, norm)
        except PhotonError as exc:
            self.record(silo, update, "rejected", str(exc))
            raise
        return norm

    def reconcile(self) -> None:
        """Write the audit line of any journaled update that lacks one (a full disk can refuse
        the line after the journal row was committed). Reads the whole log and journal, so
        only after an audit write failed; at start the constructor does it once."""
        if not self._behind:
            return
        entries, _ = read_audit(self.audit.path)
        self._reconcile(self.store, entries)
        self._behind = False

    def _reconcile(self, store: Store, entries: list[dict[str, object]]) -> None:
        """The journal is the commit point and the audit line follows it; a crash between the
        two leaves a recorded update without its line, which is written now."""
        audited = {
            (e.get("silo"), e.get("round"), e.get("digest"))
            for e in entries
            if e.get("verdict") == "accepted"
        }
        for u in store.all_updates():
            if (u.silo_id, u.update.round, u.update.digest) not in audited:
                self.audit.record(
                    silo=u.silo_id,
                    **u.update.audit_fields(),
                    verdict="accepted",
                    reason="recorded before a restart",
                )
                self.counts["accepted"] += 1

    def accepted(self, silo: str, update: UpdateRecord, norm: float) -> None:
        self.recent.append(norm)
        self.record(silo, update, "accepted")

    def record(self, silo: str, update: UpdateRecord, verdict: str, reason: str = "") -> None:
        self.counts[verdict] += 1
        try:
            self.audit.record(silo=silo, **update.audit_fields(), verdict=verdict, reason=reason)
        except BaseException:
            self._behind = True
            raise

    def excluded(self, row: UpdateRow, reason: str) -> None:
        """An accepted update left out of its round's aggregate (see GlobalModel.advance)."""
        self.counts["excluded"] += 1
        self.audit.record(
            silo=row.silo_id,
            round=row.update.round,
            digest=row.update.digest,
            signature=row.update.signature,
            verdict="excluded",
            reason=reason,
        )

    def _check_signature(self, silo: str, update: UpdateRecord, peer_cert: bytes | None) -> None:
        if peer_cert is None:  # plaintext (--insecure): no identity to check against
            return
        if not self.server.require_signatures and not update.signature:
            return
        if not verify_digest(peer_cert, update.digest, update.round, update.signature):
            raise UpdateRejected(
                "the update's signature does not verify against the silo's certificate "
                "(sign the digest with the certificate's key)",
                silo=silo,
                round=update.round,
            )

    def _check_norm(self, silo: str, round_: int, norm: float) -> None:
        ratio = self.server.max_norm_ratio
        if ratio <= 0 or len(self.recent) < MIN_HISTORY:
            return
        median = statistics.median(self.recent)
        if norm > ratio * median:
            raise UpdateRejected(
                f"update L2 norm {norm:.4g} exceeds {ratio:g}x the median {median:.4g} of "
                "recently accepted updates (server.max_norm_ratio)",
                silo=silo,
                round=round_,
            )
