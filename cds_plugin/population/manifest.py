"""The run manifest: what a worklist run into one output folder has finished, so a rerun continues.

`DIR/manifest.json` is the only thing a rerun trusts. It is written by the client process alone, after
each finished task, to a temporary file that is renamed over the old one, so it always holds a whole
state. A file the manifest does not list (a partition written by a task whose run was interrupted before
it was recorded, a temporary file) is deleted when the next run starts and its work is done again. The
manifest also pins the source's fingerprint and the model version: a rerun over other data or with
another model refuses the folder instead of mixing results.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cds_plugin.errors import CdsPluginError

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
GROUPS = "groups"
PARTS = "parts"
EXPORT = "export"
EXPORT_ERRORS = "export-errors"


class WorklistError(CdsPluginError):
    """A worklist run that cannot go on; the message says why and what to do."""

    code = "processing"


class UsageError(WorklistError):
    """The run was asked for something it must refuse: a folder in use or holding another run, bad options."""

    code = "invalid"


@dataclass
class RunState:
    """The manifest's content (see the module docstring) and where it lives."""

    folder: Path
    data: dict[str, Any] = field(default_factory=dict)
    _lock: IO[str] | None = None

    @classmethod
    def open(cls, folder: Path) -> RunState:
        """Lock the output folder (one run at a time) and read its manifest, if any."""
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / LOCK).open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise UsageError(f"{folder}: another worklist run is using this folder") from None
        state = cls(folder, _lock=lock)
        path = folder / MANIFEST
        if path.exists():
            try:
                state.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state.close()
                raise WorklistError(
                    f"{path}: unreadable manifest; remove the folder's contents to start over"
                ) from None
            if state.data.get("format") != FORMAT:
                state.close()
                raise WorklistError(f"{path}: manifest format {state.data.get('format')!r} is not {FORMAT}")
        else:
            state.data = {"format": FORMAT, "created": _now()}
        return state

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save(self) -> None:
        self.data["updated"] = _now()
        path = self.folder / MANIFEST
        tmp = path.with_name(f".tmp-{MANIFEST}")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- pins ----------------------------------------------------------------------------------------

    def pin(self, name: str, value: Any, what: str) -> None:
        """Record `value` under `name`, or refuse when an earlier run recorded another one."""
        known = self.data.get(name)
        if known is None:
            self.data[name] = value
        elif known != value:
            raise UsageError(
                f"{self.folder} holds a run with another {what} ({_short(known)}, now {_short(value)}); "
                "use another --out folder, or empty this one to start over"
            )

    # -- what is finished ------------------------------------------------------------------------------

    @property
    def splits(self) -> dict[str, Any]:
        return self.data.setdefault("splits", {})

    @property
    def scored(self) -> dict[str, Any]:
        return self.data.setdefault("scored", {})

    @property
    def explained(self) -> list[dict[str, Any]]:
        return self.data.setdefault("explained", [])

    @property
    def export(self) -> dict[str, Any]:
        return self.data.setdefault("export", {})

    def trusted_files(self) -> tuple[set[str], set[str]]:
        """Names under groups/ and parts/ the manifest vouches for."""
        groups = set(self.splits)
        parts: set[str] = set()
        for key in self.scored:
            parts.update((f"score-{int(key):05d}.parquet", f"patients-{int(key):05d}.parquet"))
        parts.update(item["file"] for item in self.explained)
        return groups, parts

    def remove_untrusted(self) -> int:
        """Delete what the manifest does not list under groups/ and parts/; returns how many entries."""
        groups, parts = self.trusted_files()
        removed = 0
        for sub, keep in ((GROUPS, groups), (PARTS, parts)):
            folder = self.folder / sub
            folder.mkdir(exist_ok=True)
            for entry in folder.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        for entry in (self.folder / EXPORT).glob(".tmp-*") if (self.folder / EXPORT).is_dir() else ():
            entry.unlink(missing_ok=True)
        return removed


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."
