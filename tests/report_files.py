"""Reading what `riskstream report` writes, for the report tests of both tiers."""

from __future__ import annotations

import csv
import struct
from pathlib import Path


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A report CSV's rows, by column name (values as text)."""
    with path.open(newline="") as rows:
        return list(csv.DictReader(rows))


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's (width, height) in pixels, from its IHDR chunk; fails when the file is no PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
