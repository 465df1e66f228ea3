"""What a silo may be called, and how a name becomes a path.

One pattern for every silo identity, checked where a name is issued (`photon certs issue`,
`init`, the CSR sign flow) and where it arrives (the aggregator resolves a peer's identity).
A name that passes is safe as one path component: lowercase letters, digits and '-', never '.'
or '/'. Names the federation uses for itself cannot be silo identities: the aggregator records
its own eval loss under `aggregator`, and `ca` names the federation CA's files.
"""

from __future__ import annotations

import re
from pathlib import Path

#: A silo name: 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit.
SILO_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: Names that may never be a silo's identity.
RESERVED_NAMES = frozenset({"aggregator", "ca", "photon-federation-ca"})


def silo_name_problem(name: object) -> str | None:
    """Why `name` cannot be a silo identity, or None if it can."""
    if not isinstance(name, str) or not SILO_NAME_RE.fullmatch(name):
        shown = repr(name[:80]) if isinstance(name, str) else repr(name)
        return (
            f"invalid silo name {shown}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit (e.g. 'silo-0', 'uni-cambridge')"
        )
    if name in RESERVED_NAMES:
        return (
            f"silo name {name!r} is reserved for the federation itself "
            f"({', '.join(sorted(RESERVED_NAMES))}); choose another"
        )
    return None


class PathEscape(ValueError):
    """A path built from names would leave the folder it must stay in."""


def path_inside(root: Path, *parts: str) -> Path:
    """`root / parts...`, refused with PathEscape unless it resolves inside `root`."""
    base = Path(root).resolve()
    path = Path(root).joinpath(*parts)
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise PathEscape(f"{path} resolves to {resolved}, outside {base}")
    return path
