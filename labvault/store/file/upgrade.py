"""Format upgrades of a file store: ``upgrade(uri)`` converts a version 1 store to the current format.

Version 1 kept one ``runs/<number>/run.json`` per run (and ``<root>/runs/`` symlinks by run id); version
2 keeps a journal per experiment (``labvault.store.file.journal``) and names run directories by run id.
Opening an older store raises ``UnsupportedOperationError`` naming this function.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from labvault._fs import atomic_write_bytes
from labvault.errors import BackendUnavailableError, CorruptDataError
from labvault.store.file.backend import FORMAT_NAME, FORMAT_VERSION, FileBackend, store_version
from labvault.store.file.fileio import dump_line, dumps_doc
from labvault.store.file.journal import JOURNAL
from labvault.store.file.segments import enc_float, last_point

__all__ = ["upgrade"]


def upgrade(uri: str) -> tuple[int, int]:
    """Convert a file store to this labvault's format; return (old version, new version).

    Version 1 kept one ``run.json`` per run; version 2 keeps a journal per experiment. Each experiment is
    converted on its own (a crash part-way leaves converted and unconverted experiments, and running
    this again finishes the job); the store marker changes last. Run it while no other process uses the
    store. A missing store is created (old version 0).
    """
    backend = FileBackend.from_uri(uri)
    marker = backend.root / "labvault.json"
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        backend._ensure_store()
        return 0, FORMAT_VERSION
    version = store_version(raw, marker)
    if version >= FORMAT_VERSION:
        backend._check_format(raw, marker)
        return version, version
    try:
        backend._lock_dir.mkdir(exist_ok=True)
        with backend._lock("experiments"):
            exp_root = backend.root / "experiments"
            names = os.listdir(exp_root) if exp_root.is_dir() else []
            for name in sorted(names):
                if not name.startswith(".") and (exp_root / name / "experiment.json").is_file():
                    _upgrade_experiment(exp_root / name)
            shutil.rmtree(backend.root / "runs", ignore_errors=True)  # version 1's run id symlinks
            atomic_write_bytes(marker, dumps_doc({"format": FORMAT_NAME, "version": FORMAT_VERSION}))
    except OSError as exc:
        raise BackendUnavailableError(f"cannot upgrade file store {str(backend.root)!r}: {exc}") from exc
    return version, FORMAT_VERSION


def _upgrade_experiment(exp_dir: Path) -> None:
    """Turn a version 1 experiment (``runs/<number>/run.json``) into a journal (idempotent)."""
    if (exp_dir / JOURNAL).exists():
        return
    runs_dir = exp_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    docs: list[tuple[dict[str, Any], Path]] = []
    for name in os.listdir(runs_dir):
        path = runs_dir / name / "run.json"
        try:
            doc = json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            continue  # a creation that crashed before writing run.json
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"document {path} is corrupt (not valid JSON): {exc}") from exc
        docs.append((doc, runs_dir / name))
    lines = []
    try:
        docs.sort(key=lambda d: int(d[0]["number"]))
        for doc, run_dir in docs:
            lines.extend(_run_lines(doc, run_dir))
            run_id = str(doc["id"])
            if run_dir.name != run_id:
                os.rename(run_dir, runs_dir / run_id)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"a run document under {runs_dir} is not a valid run: {exc!r}") from exc
    atomic_write_bytes(exp_dir / JOURNAL, b"".join(dump_line(line) + b"\n" for line in lines),
                       create_parents=False)


def _run_lines(doc: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """The journal lines of a version 1 run document (and its metric segments)."""
    run_id = str(doc["id"])
    lines: list[dict[str, Any]] = [
        {"op": "create", "id": run_id, "number": int(doc["number"]), "name": doc.get("name"),
         "parent_id": doc.get("parent_id"), "start_time": float(doc["start_time"]),
         "params": doc.get("params") or {}, "tags": doc.get("tags") or {}},
        {"op": "update", "id": run_id,
         "fields": {k: doc.get(k) for k in ("status", "end_time", "error", "heartbeat")}},
    ]
    if doc.get("results"):
        lines.append({"op": "results", "id": run_id, "results": doc["results"]})
    latest = _latest_from_segments(run_dir / "metrics")
    if latest:
        lines.append({"op": "metrics", "id": run_id, "metrics": latest})
    return lines


def _latest_from_segments(metrics_dir: Path) -> dict[str, list[Any]]:
    """The last point and end offset of every segment in a run's metrics directory."""
    try:
        names = sorted(os.listdir(metrics_dir))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    latest: dict[str, list[Any]] = {}
    for name in names:
        if not name.endswith(".seg"):
            continue
        stem = name[:-4]
        if "~" in stem:  # a hashed long key: its sidecar holds the key
            try:
                key = str(json.loads((metrics_dir / f"{stem}.key").read_bytes())["key"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CorruptDataError(f"metric key file {metrics_dir / stem}.key is missing or corrupt"
                                       ) from exc
        else:
            key = unquote(stem)
        point = last_point((metrics_dir / name).read_bytes(), str(metrics_dir / name))
        if point is not None:
            value, step, stamp, end = point
            latest[key] = [enc_float(value), step, stamp, end]
    return latest
