"""``SuiteBase``: the fixtures and helpers every part of the conformance suite shares.

``BackendTests`` (``labvault.testing.backend_suite``) is composed of themed mixins (``suite_runs``,
``suite_validation``, ``suite_metrics``, ``suite_artifacts``, ``suite_search``, ``suite_feed``,
``suite_processes`` and the bad-input table); each subclasses this base for the ``uri`` and ``vault``
fixtures, the capability check, the change-feed drain and the worker-process helpers.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import labvault
from labvault.client.vault import Vault
from labvault.testing._workers import create_models, start_runs

__all__ = ["SuiteBase", "create_models_worker", "run_at_once", "run_worker", "start_runs_worker"]

_A = TypeVar("_A")
_R = TypeVar("_R")


def run_worker(func: str, *args: Any, timeout: float = 60) -> str:
    """Run a function of ``labvault.testing._workers`` in a fresh interpreter; return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "labvault.testing._workers", func, json.dumps(list(args))],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"worker {func} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def create_models_worker(args: tuple[str, int, str]) -> list[int]:
    """``_workers.create_models`` for a ``multiprocessing`` pool."""
    return create_models(*args)


def start_runs_worker(args: tuple[str, str, int, str]) -> list[int]:
    """``_workers.start_runs`` for a ``multiprocessing`` pool (one tuple argument, importable by name)."""
    return start_runs(*args)


def run_at_once(worker: Callable[[_A], _R], args: _A, processes: int, barrier: str | Path,
                timeout: float = 180) -> list[_R]:
    """``worker(args)`` in ``processes`` spawned processes at once: each waits for the file ``barrier``
    (named in ``args``), which appears a second after the pool starts; their results, in order."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pending = pool.map_async(worker, [args] * processes)
        time.sleep(1.0)
        Path(barrier).touch()
        return pending.get(timeout=timeout)


class SuiteBase:
    """The shared part of every suite mixin: subclasses provide a ``uri`` fixture (a fresh, empty store)."""

    #: Run the heavy cases (300 MB artifact) for this backend. Set on one class per backend family.
    heavy: bool = False

    @pytest.fixture
    def uri(self) -> str:
        """The URI of a fresh, empty store: every ``BackendTests`` subclass overrides this."""
        raise NotImplementedError("a BackendTests subclass must provide a 'uri' fixture")

    @pytest.fixture
    def vault(self, uri: str) -> Iterator[Vault]:
        """A vault open on ``uri``, closed after the test."""
        with labvault.open(uri) as vault:
            yield vault

    @staticmethod
    def _capability(vault: Vault, name: str) -> bool:
        return bool(getattr(type(vault.backend), name))

    @staticmethod
    def _drain(feed: Any, until: str, timeout: float = 15.0) -> list[Any]:
        """The events of ``feed`` up to the first of kind ``until`` (or whatever came within ``timeout``)."""
        events = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            event = feed.get(timeout=max(0.01, deadline - time.time()))
            if event is None:
                break
            events.append(event)
            if event.kind == until:
                break
        return events
