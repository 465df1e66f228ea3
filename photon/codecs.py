"""The codec registry: every codec's name, whether it loses information, and block-size bounds.

    fp32   lossless float bits                          an update or a full download
    bf16   lossy: round-to-nearest-even bfloat16         an update
    int8   lossy: per-block absmax scale, 8-bit values   an update (uses block_size)
    int4   lossy: per-block absmax scale, 4-bit values   an update (uses block_size)
    xor    lossless XOR against a base the reader holds  a delta download only

Two block-size ranges, both written down here: what an encoded object may declare (the format's
limits, checked when an object is written or read) and what a federation may choose (the
narrower range `[federation] block_size` accepts). The byte layouts live in
`bandwidth.quantize`; this module holds only names and numbers, so the shared core
(`photon.federation`) and `bandwidth/` read the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Codec = Literal["fp32", "bf16", "int8", "int4"]
"""A codec a federation may choose for its updates."""


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """One codec's facts."""

    name: str
    lossy: bool
    """The receiver decodes something other than what was sent (error feedback applies)."""
    blocked: bool
    """Values are scaled per block of `block_size`, so the block size matters."""
    needs_base: bool
    """Decoding needs a base tensor the reader already holds."""


REGISTRY: dict[str, CodecInfo] = {
    info.name: info
    for info in (
        CodecInfo(name="fp32", lossy=False, blocked=False, needs_base=False),
        CodecInfo(name="bf16", lossy=True, blocked=False, needs_base=False),
        CodecInfo(name="int8", lossy=True, blocked=True, needs_base=False),
        CodecInfo(name="int4", lossy=True, blocked=True, needs_base=False),
        CodecInfo(name="xor", lossy=False, blocked=False, needs_base=True),
    )
}

CODECS: tuple[str, ...] = get_args(Codec)
"""Codecs for updates and full downloads."""
ALL_CODECS: tuple[str, ...] = tuple(REGISTRY)
"""Every codec an object may name; `xor` is the lossless delta against a base the reader holds."""
BLOCKED_CODECS: tuple[str, ...] = tuple(name for name, info in REGISTRY.items() if info.blocked)

DEFAULT_BLOCK_SIZE = 256
MIN_BLOCK_SIZE = 8
"""The smallest block size an encoded object may declare."""
MAX_BLOCK_SIZE = 65536
"""The largest block size an encoded object may declare."""
MIN_FEDERATION_BLOCK_SIZE = 16
"""The smallest block size `[federation] block_size` accepts."""
MAX_FEDERATION_BLOCK_SIZE = 4096
"""The largest block size `[federation] block_size` accepts."""


def is_lossy(codec: str) -> bool:
    """Whether `codec` loses information (KeyError for a name the registry does not know)."""
    return REGISTRY[codec].lossy
