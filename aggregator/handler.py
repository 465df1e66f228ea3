"""What the gRPC servicer asks of the federation: the `FederationHandler` protocol.

The servicer converts protobuf messages to these calls and back, and nothing more; the round
engine implements the protocol (and the transfer benchmark's stand-in server does too). Every
call names the caller by the silo id the auth interceptor verified. The records here are what
crosses the boundary besides plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from aggregator.globalmodel import Published
    from aggregator.uploads import UploadSession
    from photon.update import UpdateRecord

TaskKind = Literal["train", "eval", "wait", "done"]
Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to a Join: the federation spec as JSON and how often to send a heartbeat."""

    spec_json: bytes
    heartbeat_interval_s: float


@dataclass(frozen=True, slots=True)
class TaskDecision:
    """The answer to GetTask."""

    kind: TaskKind
    round: int = 0
    base_version: int = 0
    local_steps: int = 0
    global_step: int = 0
    deadline_s: float = 0.0
    retry_after_s: float = 0.0
    message: str = ""


@dataclass(frozen=True, slots=True)
class UploadState:
    """The answer to UploadStatus: the next offset, whether every byte is in, and whether the
    journal holds the update (the silo is done with it)."""

    committed: int
    complete: bool
    accepted: bool


class FederationHandler(Protocol):
    """The federation behind the servicer. Raises `PhotonError`s; the servicer maps them."""

    def join(
        self, silo: str, num_train_tokens: int, tokenizer_digest: str, agent_version: str = ""
    ) -> Admission:
        """Admit `silo`; `agent_version` (the silo's photon version) is logged."""
        ...

    def heartbeat(self, silo: str) -> int:
        """Record that `silo` is alive; returns the current global version."""
        ...

    def get_task(self, silo: str, wait_s: float) -> TaskDecision:
        """The next task for `silo`, waiting up to `wait_s` while the answer would be WAIT."""
        ...

    def download(self, version: int, have_version: int) -> Published | None:
        """The object to send for `version` (a delta when the silo holds version − 1)."""
        ...

    def begin_upload(self, silo: str, update: UpdateRecord, offset: int) -> UploadSession:
        """The (possibly resumed) receive session for a stream starting at byte `offset`."""
        ...

    def complete_upload(
        self, silo: str, update: UpdateRecord, path: Path, peer_cert: bytes | None = None
    ) -> bool:
        """Verify and record a fully received update; True if newly accepted."""
        ...

    def upload_status(self, silo: str, transfer_id: str) -> UploadState:
        """Where an upload stands, for a silo resuming it."""
        ...

    def record_traffic(self, round_: int, silo: str, direction: Direction, n_bytes: int) -> None:
        """Count the bytes one finished (or broken) stream moved."""
        ...

    def report_eval(self, silo: str, version: int, loss: float, tokens: int) -> None: ...

    def leave(self, silo: str, reason: str) -> None: ...

    def status(self) -> dict[str, Any]:
        """A snapshot for operators (JSON-serialisable)."""
        ...
