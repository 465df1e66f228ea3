"""The exception tree, written down once.

    PhotonError                      base of every error Photon raises on purpose
    ├── ConfigError                  a config file or option is wrong; names the key and the fix
    ├── DataError                    stored data (token shards, checkpoints) missing or corrupt
    │   └── CheckpointError          a checkpoint file is truncated, corrupt or not one
    ├── PKIError                     certificates: missing, expired, foreign CA, would overwrite
    ├── TransferError                moving an object failed; carries transfer id and offset
    │   ├── ChunkIntegrityError      a chunk's CRC, offset or the object's digest is wrong
    │   └── ResumeMismatch           a resume does not match the transfer on the other side
    ├── CodecError                   an object cannot be encoded or decoded (corrupt, bad manifest)
    ├── UpdateRejected               an update failed validation (manifest, finite, norm, round)
    ├── AlreadyAccepted              this silo's update for the round is already in the journal
    ├── RoundClosed                  an update or task refers to a round that is no longer open
    ├── ResourceExhausted            a limit (transfers, request rate) refuses the call for now
    │   └── DiskFull                 the disk under the state directory is full (ENOSPC, EDQUOT)
    ├── NotAuthorized                a peer's identity is not allowed to do what it asked
    └── DaemonFailed                 a daemon's own loop failed; the process must exit non-zero

Every error carries an optional `silo` and `round` so a log line can say whose and when. The
aggregator's servicer is the only place that turns these into gRPC status codes.
"""

from __future__ import annotations


class PhotonError(Exception):
    """Base class; `silo` and `round` say whose work failed, when known."""

    def __init__(self, message: str, *, silo: str | None = None, round: int | None = None) -> None:
        super().__init__(message)
        self.silo = silo
        self.round = round

    def context(self) -> dict[str, object]:
        """Fields for a structured log line."""
        return {k: v for k, v in (("silo", self.silo), ("round", self.round)) if v is not None}


class ConfigError(PhotonError):
    """A configuration value is missing, mistyped or contradicts another."""


class DataError(PhotonError):
    """Stored data (token shards, checkpoints) is missing, corrupt, or does not match."""


class CheckpointError(DataError):
    """A checkpoint file is truncated, corrupt, or does not match its recorded digest."""


class PKIError(PhotonError):
    """A certificate or key is missing, invalid, expired, or would be overwritten."""


class TransferError(PhotonError):
    """Moving an object between the daemons failed."""

    def __init__(
        self,
        message: str,
        *,
        transfer_id: str | None = None,
        offset: int | None = None,
        silo: str | None = None,
        round: int | None = None,
    ) -> None:
        super().__init__(message, silo=silo, round=round)
        self.transfer_id = transfer_id
        self.offset = offset

    def context(self) -> dict[str, object]:
        ctx = super().context()
        if self.transfer_id is not None:
            ctx["transfer_id"] = self.transfer_id
        if self.offset is not None:
            ctx["offset"] = self.offset
        return ctx


class ChunkIntegrityError(TransferError):
    """A chunk's checksum or offset, or the whole object's digest, does not match."""


class ResumeMismatch(TransferError):
    """A resumed transfer does not match what the other side holds."""


class CodecError(PhotonError):
    """An encoded object is truncated, corrupt, or its manifest is invalid."""


class UpdateRejected(PhotonError):
    """An update failed validation; nothing of it reached the aggregate."""


class AlreadyAccepted(PhotonError):
    """The silo's update for this round was accepted before: a second copy is not needed.
    Not a failure for the silo, whose update is in."""


class RoundClosed(PhotonError):
    """The round an update or task names is not the open one."""

    def __init__(self, message: str, *, open_round: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.open_round = open_round


class ResourceExhausted(PhotonError):
    """A resource limit refuses this call for now; the caller should back off and retry."""


class DiskFull(ResourceExhausted):
    """A write failed because the filesystem is full or over quota; nothing was half-recorded,
    and the same call succeeds once space returns."""


class NotAuthorized(PhotonError):
    """The peer's certificate identity may not perform this action."""


class DaemonFailed(PhotonError):
    """A daemon's own loop (the aggregator's round driver) raised: the process must end with a
    non-zero exit so that a supervisor restarts it, never linger alive and serving nothing."""
