"""Moving objects between the silo and the aggregator: resumable chunked upload and download.

Upload: ask UploadStatus for the committed offset, stream the header and the chunks from there;
after a broken stream or a restart of either side, ask again and continue. At most the chunk in
flight is sent twice. Download: stream into a `.partial` file; a broken stream resumes at its
size; the digest is checked before anything is decoded.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from bandwidth.chunking import PartialFile, iter_file_chunks
from bandwidth.codec import iter_tensors, read_manifest
from bandwidth.ratelimit import TokenBucket
from photon.errors import ChunkIntegrityError, CodecError, TransferError
from photon.faults import crash_point
from photon.fsutil import atomic_write_bytes
from photon.logs import get_logger
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from silo_agent.client import AggregatorClient, is_transient, status_of

log = get_logger("silo_agent.transfers")


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    """An encoded update on disk, waiting to be (or being) uploaded."""

    update: UpdateRecord
    #: The encoded object.
    path: str

    def to_json(self) -> dict[str, object]:
        """The flat object `state.json` keeps: the record's fields and the path."""
        return {**self.update.to_json(), "path": self.path}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PendingUpdate:
        return cls(update=UpdateRecord.from_json(d), path=str(d["path"]))


#: Called with the size of every chunk sent or received: pacing, progress, metrics.
ChunkHook = Callable[[int], None]


def _hook(limiter: TokenBucket | None, on_chunk: ChunkHook | None) -> ChunkHook:
    def hook(n: int) -> None:
        if limiter is not None:
            limiter.acquire(n)
        if on_chunk is not None:
            on_chunk(n)

    return hook


#: Every stream has a deadline: room for the slowest link we support (1 MB/s) plus a margin;
#: a stream that stops moving bytes is cut sooner by the aggregator's idle watchdog.
MIN_RATE_BYTES_S = 1_000_000
DOWNLOAD_DEADLINE_S = 6 * 3600.0


def stream_deadline(nbytes: int) -> float:
    return 600.0 + nbytes / MIN_RATE_BYTES_S


class UploadOutcome(enum.Enum):
    ACCEPTED = "accepted"
    ROUND_CLOSED = "round_closed"
    REJECTED = "rejected"


class _Incomplete(Exception):
    """The stream ended before the object was complete; resume from the committed offset."""


def _retry_upload(exc: Exception) -> bool:
    return (
        isinstance(exc, _Incomplete)
        or is_transient(exc)
        or (status_of(exc) == grpc.StatusCode.DATA_LOSS)
    )


def upload(
    client: AggregatorClient,
    pending: PendingUpdate,
    *,
    chunk_bytes: int,
    limiter: TokenBucket | None = None,
    on_chunk: ChunkHook | None = None,
) -> UploadOutcome:
    """Upload `pending` until accepted; say so if the round closed or the update is refused."""
    try:
        client.retrier.call(
            lambda: _upload_once(client, pending, chunk_bytes, _hook(limiter, on_chunk)),
            retryable=_retry_upload,
            what="Upload",
        )
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            log.warning("upload_round_closed", round=pending.update.round, detail=details)
            return UploadOutcome.ROUND_CLOSED
        if code == grpc.StatusCode.ALREADY_EXISTS:  # accepted before: a retry after a crash
            log.info("upload_already_accepted", round=pending.update.round, detail=details)
            return UploadOutcome.ACCEPTED
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            log.error("upload_rejected", round=pending.update.round, detail=details)
            return UploadOutcome.REJECTED
        raise
    return UploadOutcome.ACCEPTED


def _upload_once(
    client: AggregatorClient, p: PendingUpdate, chunk_bytes: int, hook: ChunkHook
) -> None:
    u = p.update
    status = client.upload_status(u.transfer_id)
    if status.accepted:
        log.info("upload_already_accepted", transfer_id=u.transfer_id)
        return
    start = int(status.committed_offset)
    if status.complete and start == u.size:
        # Every byte arrived before the aggregator stopped short of recording the update (a
        # crash in between): a header alone, at offset = size, asks it to record the update.
        log.info("upload_bytes_all_held", transfer_id=u.transfer_id, size=u.size)
    elif start > u.size:
        start = 0
    elif start:
        log.info("upload_resuming", transfer_id=u.transfer_id, offset=start, size=u.size)
    reply = client.stub.Upload(
        _upload_messages(p, start, chunk_bytes, hook),
        metadata=client.metadata,
        timeout=stream_deadline(u.size - start),
    )
    if reply.status != pb.UploadReply.ACCEPTED:
        raise _Incomplete(f"committed {reply.committed_offset} of {u.size}")
    log.info("upload_accepted", transfer_id=u.transfer_id, bytes_sent=u.size - start)


def _upload_messages(
    p: PendingUpdate, start: int, chunk_bytes: int, hook: ChunkHook
) -> Iterator[pb.UploadChunk]:
    yield pb.UploadChunk(header=p.update.to_header(offset=start))
    for c in iter_file_chunks(Path(p.path), start=start, chunk_size=chunk_bytes):
        hook(len(c.data))
        crash_point("silo.upload_chunk")
        yield pb.UploadChunk(chunk=pb.Chunk(offset=c.offset, data=bytes(c.data), crc32=c.crc32))


def download(
    client: AggregatorClient,
    version: int,
    dest: Path,
    *,
    base: tuple[int, Mapping[str, torch.Tensor]] | None = None,
    limiter: TokenBucket | None = None,
    on_chunk: ChunkHook | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Fetch global `version` (as a lossless delta from `base` when the aggregator has it).
    With `shapes`, the object's manifest must describe exactly that model before anything is
    decoded (no decompression bomb from a compromised aggregator)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = base[0] if base is not None else -1
    path, header = client.retrier.call(
        lambda: _download_once(client, version, have, dest, _hook(limiter, on_chunk)),
        retryable=lambda e: is_transient(e) or isinstance(e, TransferError),
        what="Download",
    )
    try:
        with path.open("rb") as fh:
            manifest = read_manifest(fh)
            if shapes is not None and manifest.shapes != dict(shapes):
                raise CodecError(f"version {version} does not describe the federation's model")
            held = None
            if header.encoding == "delta":
                if base is None or header.base_version != base[0]:
                    raise CodecError("a delta download for a version this silo does not hold")
                held = base[1]
            return dict(iter_tensors(fh, manifest, base=held))
    finally:
        path.unlink(missing_ok=True)
        (dest / "download.json").unlink(missing_ok=True)


def _download_once(
    client: AggregatorClient, version: int, have: int, dest: Path, hook: ChunkHook
) -> tuple[Path, pb.ObjectHeader]:
    known = _known_download(dest, version)
    offset = known[1] if known else 0
    stream = client.stub.Download(
        pb.DownloadRequest(version=version, offset=offset, have_version=have),
        metadata=client.metadata,
        timeout=DOWNLOAD_DEADLINE_S,
    )
    try:
        first = next(stream)
    except grpc.RpcError as exc:
        if offset and status_of(exc) == grpc.StatusCode.OUT_OF_RANGE:  # a smaller object now
            _forget_download(dest)
            raise TransferError("download object changed; restarting", offset=offset) from exc
        raise
    if first.WhichOneof("body") != "header":
        raise ChunkIntegrityError("Download stream did not start with a header")
    h = first.header
    final = dest / f"v{version:06d}-{h.digest[:16]}.obj"
    if known is None or known[0] != final:
        if offset:  # the aggregator re-published another object: start over
            _forget_download(dest)
            raise TransferError("download object changed; restarting", offset=offset)
        atomic_write_bytes(
            dest / "download.json", json.dumps({"version": version, "path": final.name}).encode()
        )
    part = PartialFile(final, size=h.size, digest=h.digest, transfer_id=final.name)
    try:
        for msg in stream:
            c = msg.chunk
            data = c.data  # each read of a bytes field copies it: read once
            hook(len(data))
            part.write_chunk(c.offset, data, c.crc32)
    finally:
        part.close()
    return Path(part.finalize()), h


def _known_download(dest: Path, version: int) -> tuple[Path, int] | None:
    try:
        meta = json.loads((dest / "download.json").read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("version") != version:
        _forget_download(dest)
        return None
    final = dest / str(meta["path"])
    partial = final.with_name(final.name + ".partial")
    return final, partial.stat().st_size if partial.exists() else 0


def _forget_download(dest: Path) -> None:
    for f in dest.glob("*.obj*"):
        f.unlink(missing_ok=True)
    (dest / "download.json").unlink(missing_ok=True)
