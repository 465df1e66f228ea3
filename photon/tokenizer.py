"""Tokenizers: the built-in byte-level one (no download), or a `tokenizers` JSON file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from photon.errors import ConfigError


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def digest(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 is BOS and 257 EOS."""

    name = "byte"
    vocab_size = 258
    bos_id = 256
    eos_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def digest(self) -> str:
        return hashlib.sha256(b"photon-byte-tokenizer-v1:258:bos=256:eos=257").hexdigest()


class HFTokenizer:
    """A `tokenizers` JSON file (e.g. a BPE trained offline); digest = SHA-256 of the file."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise ConfigError(
                "tokenizer file given but the `tokenizers` package is not "
                "installed: pip install tokenizers"
            ) from exc
        self.path = Path(path)
        self._data = self.path.read_bytes()
        self._tok = _Tok.from_str(self._data.decode())
        self.name = self.path.name
        self.vocab_size = int(self._tok.get_vocab_size())
        self.eos_id = self._special(("</s>", "<|endoftext|>", "<eos>"), self.vocab_size - 1)
        self.bos_id = self._special(("<s>", "<|startoftext|>", "<bos>"), self.eos_id)

    def _special(self, names: tuple[str, ...], fallback: int) -> int:
        for n in names:
            i = self._tok.token_to_id(n)
            if i is not None:
                return int(i)
        return fallback

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def digest(self) -> str:
        return hashlib.sha256(self._data).hexdigest()


def load_tokenizer(spec: str) -> Tokenizer:
    """ "byte" for the built-in tokenizer, or a path to a `tokenizers` JSON file."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"tokenizer {spec!r} is neither 'byte' nor an existing tokenizer JSON file"
        )
    return HFTokenizer(path)
