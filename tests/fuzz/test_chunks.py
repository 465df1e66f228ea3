"""Resumable receiving files: a `PartialFile` fed arbitrary chunk sequences raises only
`TransferError`s and never finalizes a file whose digest or size is wrong."""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bandwidth.chunking import PartialFile, sha256_file
from photon.errors import TransferError
from tests.fuzz._support import U32, cases


@dataclass(frozen=True)
class Op:
    kind: str  # chunk | reopen | sync | finalize
    offset: int = 0
    data: bytes = b""
    crc: int = 0


@st.composite
def transfer_plans(draw: st.DrawFn) -> tuple[bytes, int, str, list[Op]]:
    """An object, the size and digest a receiver is told (right or wrong), and a sequence of
    chunks (genuine, re-sent, misplaced, corrupt, random) with reopens and finalizes."""
    source = draw(st.binary(max_size=3000))
    size = draw(st.sampled_from([len(source)] * 3) | st.integers(-2, 4000))
    good = hashlib.sha256(source).hexdigest()
    digest = draw(
        st.sampled_from([good, good, good.upper(), hashlib.sha256(source + b"x").hexdigest()])
        | st.text(max_size=70)
    )
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(
            st.sampled_from(["genuine"] * 4 + ["corrupt", "random", "reopen", "sync", "finalize"])
        )
        if kind in ("genuine", "corrupt"):
            start = draw(st.integers(0, len(source)))
            data = source[start : start + draw(st.integers(0, 700))]
            crc = zlib.crc32(data)
            if kind == "corrupt":
                crc ^= draw(st.integers(1, U32))  # any other CRC
            ops.append(Op("chunk", start, data, crc))
        elif kind == "random":
            data = draw(st.binary(max_size=700))
            crc = draw(st.sampled_from([zlib.crc32(data)]) | st.integers(0, U32))
            ops.append(Op("chunk", draw(st.integers(-5, 4100)), data, crc))
        else:
            ops.append(Op(kind))
    return source, size, digest, ops


def _run_transfer(plan: tuple[bytes, int, str, list[Op]]) -> None:
    _source, size, digest, ops = plan
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "obj.upd"
        finalized = False

        def opened() -> PartialFile | None:
            try:
                return PartialFile(
                    final, size=size, digest=digest, transfer_id="fz", sync_every=512
                )
            except TransferError:
                return None

        part = opened()
        for op in ops:
            if part is None:
                break
            try:
                if op.kind == "chunk":
                    part.write_chunk(op.offset, op.data, op.crc)
                elif op.kind == "reopen":
                    part.close()
                    part = opened()
                elif op.kind == "sync":
                    part.sync()
                else:
                    assert part.finalize() == final
                    finalized = True
            except TransferError:
                pass
            assert final.exists() == finalized, "only a successful finalize makes the file"
            if finalized:
                assert sha256_file(final) == digest.lower() and final.stat().st_size == size
        if part is not None:
            part.close()


@cases(60, long=1500)
@given(plan=transfer_plans())
def test_partial_file_raises_only_transfer_errors_and_never_keeps_bad_bytes(
    plan: tuple[bytes, int, str, list[Op]],
) -> None:
    _run_transfer(plan)
