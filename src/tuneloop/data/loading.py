"""Read records from JSONL, Parquet, CSV or a saved Hugging Face dataset folder.

Every record comes with its position so validation errors can name it. JSONL files may carry a
UTF-8 BOM, CRLF line ends and blank lines; a byte that is not UTF-8, a line that is not a JSON object
(including a truncated last line) or an empty file is a DataError naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.data.errors import DataError


@dataclass(frozen=True)
class Record:
    path: str
    line: int  # 1-based line for JSONL/CSV, 0-based row for Parquet / HF datasets
    where: str  # "line" or "row"
    data: dict[str, Any]

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(self.path, message, line=self.line, field=field, where=self.where)


def read_records(path: str | Path) -> list[Record]:
    """All records of a data file (or HF dataset folder), in order. Raises DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(str(p), "file not found")
    if p.is_dir():
        records = list(_read_hf_dataset(p))
    else:
        suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
        reader = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet, ".csv": _read_csv}.get(suffix)
        if reader is None:
            raise DataError(str(p), f"unknown file type '{p.suffix}': expected .jsonl, .parquet, .csv or a dataset folder")
        records = list(reader(p))
    if not records:
        raise DataError(str(p), "the file holds no records")
    return records


def _read_jsonl(path: Path) -> Iterator[Record]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(str(path), f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})",
                            line=number) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            hint = " (the line looks cut short)" if "Unterminated" in err.msg or "Expecting" in err.msg else ""
            raise DataError(str(path), f"not valid JSON: {err.msg} at column {err.colno}{hint}", line=number) from None
        if not isinstance(data, dict):
            raise DataError(str(path), f"expected a JSON object, got {type(data).__name__}", line=number)
        yield Record(str(path), number, "line", data)


def _read_csv(path: Path) -> Iterator[Record]:
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(str(path), "not valid UTF-8", line=line) from None
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        if not any((v or "").strip() for v in row.values()):
            continue
        yield Record(str(path), reader.line_num, "line", {k: v for k, v in row.items() if k is not None})


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(str(path), f"cannot read Parquet: {err}") from None
    for i, row in enumerate(rows):
        yield Record(str(path), i, "row", row)


def _read_hf_dataset(path: Path) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(str(path), f"not a saved Hugging Face dataset folder: {err}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(str(path), f"dataset has splits {list(ds)}; expected a 'train' split")
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield Record(str(path), i, "row", row)
