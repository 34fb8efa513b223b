"""Generated blocks in docs and README: the text between a ``<!-- name:begin … -->`` and ``<!-- name:end -->``
marker pair, written by an experiment's ``--docs`` and compared by a test, so every number a doc
shows is its committed result file's."""

from __future__ import annotations

from pathlib import Path


def read_block(path: Path, begin: str, end: str) -> str:
    """The block's text (stripped); SystemExit naming the file when a marker is missing."""
    text = Path(path).read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no generated block ({begin} … {end})")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def write_block(path: Path, begin: str, end: str, body: str) -> None:
    """Replace the block's text with ``body``, the rest of the file as it was."""
    read_block(path, begin, end)  # both markers present
    head, rest = Path(path).read_text().split(begin, 1)
    Path(path).write_text(f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}")
