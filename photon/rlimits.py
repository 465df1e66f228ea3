"""Process resource limits a long-running daemon needs: open file descriptors.

A daemon holds one descriptor per connection; the common default soft limit of 1,024 would
make a flood of connections exhaust it. `raise_descriptor_limit` lifts the soft limit to the
hard one at start, and `connection_budget` says how many connections fit under it.
"""

from __future__ import annotations

import resource

from photon.logs import get_logger

log = get_logger("photon.rlimits")

#: Descriptors kept free for what is not a connection: journal, checkpoints, spool files,
#: logs, gRPC's own pipes and the metrics endpoint.
RESERVED_DESCRIPTORS = 256


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("descriptor_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    log.info("descriptor_limit", soft=soft, hard=hard)
    return int(soft)


def connection_budget(wanted: int, descriptor_limit: int) -> int:
    """Connections that fit: `wanted`, lowered to leave RESERVED_DESCRIPTORS free (at least 16)."""
    return max(16, min(wanted, descriptor_limit - RESERVED_DESCRIPTORS))
