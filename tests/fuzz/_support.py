"""What the fuzzers share: their settings, the object format's framing, a byte mutator, and
strategies for protobuf fields."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bandwidth.objectfmt import MAGIC, PREFIX_SIZE

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def cases(quick: int, long: int | None = None) -> settings:
    """`quick` examples in a plain run; `long` under the `long` Hypothesis profile
    (`pytest tests/fuzz --hypothesis-profile=long`, registered in tests/conftest.py)."""
    n = long if long is not None and settings.get_current_profile_name() == "long" else quick
    return settings(max_examples=n, deadline=None, suppress_health_check=_QUIET)


U32, U64 = 2**32 - 1, 2**64 - 1
INTERESTING_INTS = (0, 1, 7, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -1, -(2**63))


def split_object(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<I", data[len(MAGIC) : PREFIX_SIZE])
    return json.loads(data[PREFIX_SIZE : PREFIX_SIZE + length]), data[PREFIX_SIZE + length :]


def join_object(body: bytes, sections: bytes, length: int | None = None) -> bytes:
    return MAGIC + struct.pack("<I", len(body) if length is None else length) + body + sections


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 of: bit flip, byte set, truncation, deletion, insertion, duplication."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "dup"]))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 64))]
    return bytes(buf)


def small_or(hi: int, lo: int = 0) -> st.SearchStrategy[int]:
    """Mostly plausible values, sometimes anything the field can carry."""
    extremes = [v for v in (hi, 2**63, 2**63 - 1, 2**31) if v <= hi]
    return (
        st.integers(lo, 4) | st.integers(lo, 4096) | st.sampled_from(extremes) | st.integers(lo, hi)
    )


HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
TRANSFER_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,16}", fullmatch=True) | st.text(
    max_size=140
)
