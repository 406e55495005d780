"""The one error type for bad input data: it names the file, the line (or row) and the field."""

from __future__ import annotations


class DataError(ValueError):
    """A record in an input file is malformed.

    ``line`` is the 1-based line number for JSONL and CSV files, the 0-based row index for Parquet
    and Hugging Face datasets (``where`` says which), or None for file-level problems.
    """

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None,
                 where: str = "line"):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        location = self.path if line is None else f"{self.path}:{line}" if where == "line" else f"{self.path} ({where} {line})"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{location}:{what} {message}")
