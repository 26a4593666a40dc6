"""Index files: one stable dataset index per line (``#`` starts a comment), naming a training subset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lit_attr.errors import DataError


def _parse_index_line(line: str, line_number: int, path: Path, num_examples: int | None) -> int | None:
    """The index on one line of an index file, or None for a blank or comment-only line."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    try:
        index = int(text)
    except ValueError:
        raise DataError(
            f"{path}:{line_number}: {text!r} is not an integer; write one stable dataset index per line."
        ) from None
    if index < 0 or (num_examples is not None and index >= num_examples):
        upper = "" if num_examples is None else f" and below {num_examples}"
        raise DataError(f"{path}:{line_number}: index {index} is out of range; indices must be >= 0{upper}.")
    return index


def read_index_file(path: str | Path, num_examples: int | None = None) -> list[int]:
    """Stable dataset indices from a text file, one integer per line, in file order.

    Blank lines and ``#`` comments (whole-line or trailing) are ignored.

    Args:
        path: the index file.
        num_examples: if given, every index must lie in ``[0, num_examples)``.

    Raises:
        DataError: missing file, a non-integer, an out-of-range or duplicate index (naming the
            line numbers), or no index at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Index file {path} does not exist; pass an existing file with --data.subset_file.")
    first_line: dict[int, int] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        index = _parse_index_line(line, line_number, path, num_examples)
        if index is None:
            continue
        if index in first_line:
            raise DataError(
                f"{path}:{line_number}: index {index} repeats line {first_line[index]}; list each index once."
            )
        first_line[index] = line_number
    if not first_line:
        raise DataError(f"Index file {path} lists no indices; write one stable dataset index per line.")
    return list(first_line)


def write_index_file(path: str | Path, indices: Sequence[int]) -> None:
    """Write stable dataset indices one per line (in the given order), readable by ``read_index_file``.

    Raises:
        DataError: for a negative or duplicate index.
    """
    values = [int(index) for index in indices]
    if any(index < 0 for index in values) or len(set(values)) != len(values):
        raise DataError(f"Cannot write {path}: indices must be distinct and non-negative.")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {len(values)} stable dataset indices\n" + "".join(f"{i}\n" for i in values))
