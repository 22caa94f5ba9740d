"""The NDJSON files of a Bulk Data export on disk: which to read, how big they are, and their fingerprint.

A folder in the Bulk Data layout holds one or more files per resource type (`Patient.ndjson`,
`Observation.000.ndjson`, `Observation.001.ndjson.gz`, ...), read recursively in name order. A file named
after a type the model does not use is not opened (its name is reported); a file whose name names no
type (`export.ndjson`) is read and may mix types. The fingerprint (names, sizes, modification times)
lets a rerun into the same output folder tell whether it is looking at the same data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir.resources import USED_TYPES

_TYPE_PREFIX = re.compile(r"([A-Z][A-Za-z]+)(?:[._-].*)?")
_SUFFIXES = (".ndjson", ".ndjson.gz")
#: gzip rarely shrinks NDJSON by less than this; used only where a gzip trailer cannot say.
_GZIP_RATIO = 8


@dataclass(frozen=True)
class SourceFile:
    """One NDJSON file: its path, the type its name gives (None: any), its size and modification time."""

    path: str
    type: str | None
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class Source:
    """The files to read and those not opened (a type the model does not use)."""

    folder: str
    files: tuple[SourceFile, ...]
    not_read: tuple[SourceFile, ...]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in (*self.files, *self.not_read):
            digest.update(f"{os.path.relpath(f.path, self.folder)}\0{f.size}\0{f.mtime_ns}\n".encode())
        return digest.hexdigest()

    def estimated_bytes(self) -> int:
        """Uncompressed bytes of the files to read (from gzip trailers where compressed)."""
        return sum(uncompressed_size(Path(f.path)) for f in self.files)


def list_source(folder: str | Path) -> Source:
    """The export's NDJSON files (raises FhirInputError when the folder has none or cannot be listed)."""
    root = Path(folder)
    if not root.is_dir():
        raise FhirInputError(f"{root}: not a folder", expression="SOURCE")
    try:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
    except OSError as exc:
        raise FhirInputError(
            f"{root}: cannot be listed ({exc.strerror or exc})", expression="SOURCE"
        ) from None
    files, not_read = [], []
    for path in paths:
        stat = path.stat()
        match = _TYPE_PREFIX.fullmatch(path.name)
        rtype = match.group(1) if match else None
        item = SourceFile(str(path.resolve()), rtype, stat.st_size, stat.st_mtime_ns)
        if rtype is not None and rtype not in USED_TYPES:
            not_read.append(item)
        else:
            files.append(item)
    if not files:
        raise FhirInputError(
            f"{root}: no NDJSON file of a type the model reads (*.ndjson, *.ndjson.gz)", expression="SOURCE"
        )
    return Source(str(root.resolve()), tuple(files), tuple(not_read))


def uncompressed_size(path: Path) -> int:
    """Size after gunzip for a gzip file (its trailer holds it modulo 4 GiB), else the file size."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return size
            fh.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(fh.read(4), "little")
    except OSError:
        return size
    # a trailer smaller than the file means it wrapped past 4 GiB (or several members): estimate instead
    return trailer if trailer >= size else size * _GZIP_RATIO


@contextmanager
def open_lines(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary stream of the file, gunzipped when it starts with the gzip magic bytes."""
    with Path(path).open("rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield unzipped
        else:
            yield raw
