"""One record describes an update end to end: the silo's pending update, the upload header,
the aggregator's journal row and its audit line all carry an `UpdateRecord`.

The record is checked once, when it is built, so a record that exists is a valid one. The
converters here are its only spellings: the protobuf `UploadHeader` on the wire, the flat JSON
object the silo keeps in `state.json`, and the fields of an audit line. "Not measured" losses
are `None` in the record and NaN on the wire and in `state.json`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from photon.codecs import CODECS
from photon.errors import UpdateRejected
from photon.v1 import federation_pb2 as pb

#: Counts from the network (tokens) must fit the journal's signed 64-bit integers.
MAX_COUNT = 2**62
_TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def valid_transfer_id(transfer_id: str) -> bool:
    """Whether `transfer_id` may name a transfer (and a file in the spool)."""
    return _TRANSFER_ID.fullmatch(transfer_id) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRecord:
    """What describes one update, whoever holds it."""

    #: The round the update was trained for.
    round: int
    #: Client-chosen, stable across retries and restarts of the same update.
    transfer_id: str
    #: The global version the update is a delta from.
    base_version: int
    #: SHA-256 hex digest and size in bytes of the encoded update object.
    digest: str
    size: int
    #: Training tokens consumed: the update's aggregation weight.
    num_tokens: int
    train_loss: float | None = None
    #: The silo's loss of the base model on its held-out split.
    base_eval_loss: float | None = None
    train_seconds: float | None = None
    #: The silo's signature over (round, digest); empty when unsigned.
    signature: bytes = b""
    #: The codec the object is encoded with; "" when the sender did not say (older silos).
    codec: str = ""

    def __post_init__(self) -> None:
        if self.codec and self.codec not in CODECS:
            raise UpdateRejected(f"codec {self.codec[:20]!r} is not one of {', '.join(CODECS)}")
        if not valid_transfer_id(self.transfer_id):
            raise UpdateRejected(
                f"transfer_id {self.transfer_id[:40]!r} must match {_TRANSFER_ID.pattern}"
            )
        if not _DIGEST.fullmatch(self.digest):
            raise UpdateRejected("digest must be 64 lowercase hex characters (SHA-256)")
        if self.size <= 0:
            raise UpdateRejected(f"size {self.size} must be positive")
        if not 0 < self.num_tokens < MAX_COUNT:
            raise UpdateRejected("num_tokens must be in (0, 2**62): it is the update's weight")
        for name in ("train_loss", "base_eval_loss"):
            value = getattr(self, name)
            if value is not None and math.isinf(value):
                raise UpdateRejected(f"{name} must be finite")
            object.__setattr__(self, name, _none_for_nan(value))  # NaN: not measured

    # -- the wire ----------------------------------------------------------------------------
    def to_header(self, offset: int) -> pb.UploadHeader:
        """The header of an upload stream that starts at byte `offset`."""
        return pb.UploadHeader(
            transfer_id=self.transfer_id,
            round=self.round,
            base_version=self.base_version,
            digest=self.digest,
            size=self.size,
            offset=offset,
            num_tokens=self.num_tokens,
            train_loss=_nan_for_none(self.train_loss),
            base_eval_loss=_nan_for_none(self.base_eval_loss),
            train_seconds=self.train_seconds or 0.0,
            signature=self.signature,
            codec=self.codec,
        )

    @classmethod
    def from_header(cls, h: pb.UploadHeader) -> tuple[UpdateRecord, int]:
        """The record an upload header describes, and the offset its stream starts at."""
        if h.size <= 0 or not 0 <= h.offset <= h.size:
            raise UpdateRejected(f"offset {h.offset} / size {h.size} are inconsistent")
        _check_reported_numbers(h)
        record = cls(
            transfer_id=h.transfer_id,
            round=h.round,
            base_version=h.base_version,
            digest=h.digest,
            size=h.size,
            num_tokens=h.num_tokens,
            train_loss=_none_for_nan(h.train_loss),
            base_eval_loss=_none_for_nan(h.base_eval_loss),
            train_seconds=h.train_seconds,
            signature=h.signature,
            codec=h.codec,
        )
        return record, h.offset

    # -- the silo's state.json ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "base_version": self.base_version,
            "transfer_id": self.transfer_id,
            "digest": self.digest,
            "size": self.size,
            "num_tokens": self.num_tokens,
            "train_loss": _nan_for_none(self.train_loss),
            "base_eval_loss": _nan_for_none(self.base_eval_loss),
            "train_seconds": self.train_seconds,
            "signature": self.signature.hex(),
            "codec": self.codec,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> UpdateRecord:
        """Read what `to_json` wrote (other keys, such as the silo's file path, are ignored)."""
        return cls(
            round=int(d["round"]),
            base_version=int(d["base_version"]),
            transfer_id=str(d["transfer_id"]),
            digest=str(d["digest"]),
            size=int(d["size"]),
            num_tokens=int(d["num_tokens"]),
            train_loss=_none_for_nan(d.get("train_loss")),
            base_eval_loss=_none_for_nan(d.get("base_eval_loss")),
            train_seconds=d.get("train_seconds"),
            signature=bytes.fromhex(str(d.get("signature", ""))),
            codec=str(d.get("codec", "")),
        )

    # -- the audit log -----------------------------------------------------------------------
    def audit_fields(self) -> dict[str, Any]:
        """The part of an audit line that describes the update (`AuditLog.record` keywords)."""
        fields: dict[str, Any] = {
            "round": self.round,
            "digest": self.digest,
            "signature": self.signature,
        }
        if self.codec:
            fields["codec"] = self.codec
        return fields


def _nan_for_none(x: float | None) -> float:
    return math.nan if x is None else x


def _none_for_nan(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _check_reported_numbers(h: pb.UploadHeader) -> None:
    """What a member says about its own training, range-checked where it enters (a NaN loss
    means "not measured"). Records read back from a journal are not re-checked: a row stored
    by an older version must never stop the aggregator from starting."""
    for name in ("train_loss", "base_eval_loss"):  # cross-entropies: never negative
        value = getattr(h, name)
        if not math.isnan(value) and not 0.0 <= value < math.inf:
            raise UpdateRejected(f"{name} must be a finite number >= 0, got {value!r}")
    if not 0.0 <= h.train_seconds < math.inf:
        raise UpdateRejected(f"train_seconds must be a finite number >= 0, got {h.train_seconds!r}")
