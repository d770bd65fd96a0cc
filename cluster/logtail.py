"""The end of a log file, read from the end (SHELL): ``cpn logs`` and error messages
show the last lines of files that may be large."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Final

TAIL_BLOCK_BYTES: Final = 8_192
TAIL_BYTES_MAX: Final = 4 * 1024 * 1024


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (read from the end, at most 4 MiB)."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            start = end
            data = b""
            while start > 0 and data.count(b"\n") <= lines and end - start < TAIL_BYTES_MAX:
                start = max(0, start - TAIL_BLOCK_BYTES)
                file.seek(start)
                data = file.read(end - start)
    except FileNotFoundError:
        return []
    text = data.decode(errors="replace").splitlines()
    if start > 0:
        text = text[1:]  # the first line was cut by the read's start
    return list(deque(text, maxlen=lines))
