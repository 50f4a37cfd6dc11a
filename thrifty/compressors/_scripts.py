"""Scripts written without spaces between words, for the compressor and the question relevance."""

from __future__ import annotations

import re

import numpy as np

#: Unicode blocks of scripts written without spaces between words: Thai, Lao, Myanmar, CJK (with kana
#: and the CJK symbols), CJK compatibility ideographs, full-width forms, and the supplementary ideographs.
SPACELESS_BLOCKS = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x2E80, 0xA4CF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF),
                    (0x20000, 0x3FFFF))

#: The same blocks as the inside of a regular-expression character class.
SPACELESS_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in SPACELESS_BLOCKS)

#: One character of those scripts.
SPACELESS_CHAR = re.compile(f"[{SPACELESS_CLASS}]")


def code_points(text: str) -> np.ndarray:
    """The code point of each character of ``text`` (lone surrogates read as they are), indexed by character
    offset."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def in_blocks(codes: np.ndarray, blocks: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Whether each of ``codes`` lies in one of ``blocks`` (inclusive code point ranges)."""
    inside = np.zeros(len(codes), dtype=bool)
    for lo, hi in blocks:
        inside |= (codes >= lo) & (codes <= hi)
    return inside


def is_spaceless(ch: str) -> bool:
    """Whether ``ch`` belongs to a script written without spaces."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in SPACELESS_BLOCKS)


#: Languages written in those scripts (ISO 639-1): Chinese, Japanese, Thai, Lao, Burmese.
SPACELESS_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my"})
