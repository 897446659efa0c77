"""Hints for a search that names a key no run has: the typo behind an empty answer (``metrics.val_acc``
for ``metrics.val_accuracy``) said as a warning with the closest existing keys, instead of silence.

A key some run of the answer has needs no check (a filtered search that found runs usually has all its
keys: the benchmark's W5 search then costs nothing more); each other param, metric or tag the filter names
costs one ``limit=1`` search (``KEY IS NOT NULL``) through the backend's own search, what a tiny query
costs on that store. Only when a key is missing are recent runs read to suggest the closest names.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from labvault import query
from labvault._uri import redact
from labvault.domain import RunInfo
from labvault.errors import NotFoundError
from labvault.store.abc import Backend

#: How many of the searched experiments' runs are read to collect the names a missing key may be.
SAMPLE_RUNS = 1000


class UnknownKeyWarning(UserWarning):
    """A filter names a param, metric or tag that no run in the searched experiments has."""


def missing_keys(backend: Backend, experiment_ids: Sequence[str], expr: query.Expr,
                 found: Sequence[RunInfo] = ()) -> list[query.Field]:
    """The param, metric and tag fields of ``expr`` that no run of these experiments has; ``found``
    (runs the search returned) spares the lookup of every key one of them has."""
    fields = sorted((f for f in query.fields_of(expr) if f.kind != "attributes"), key=str)
    if not experiment_ids:
        return []
    return [f for f in fields if not _seen(f, found)
            and not backend.search_runs(experiment_ids, query.IsNull(f, negated=True), [], 1, 0)]


def _seen(field: query.Field, found: Sequence[RunInfo]) -> bool:
    """Whether one of ``found`` has the field's key (runs that lack it are few in a typical answer, so
    this stops at the first run or the first few)."""
    return any(field.key in getattr(run, field.kind) for run in found)


def closest_keys(backend: Backend, experiment_ids: Sequence[str], field: query.Field, n: int = 3
                 ) -> list[str]:
    """Up to ``n`` existing keys of the same kind that look like ``field``'s (by difflib's ratio), from
    the most recent runs; any kind's keys when none of its own kind is close."""
    runs = backend.search_runs(experiment_ids, query.TrueExpr(),
                               [query.OrderKey(query.Field("attributes", "start_time"), True)],
                               SAMPLE_RUNS, 0)
    by_kind: dict[str, set[str]] = {"params": set(), "metrics": set(), "tags": set()}
    for run in runs:
        by_kind["params"].update(run.params)
        by_kind["metrics"].update(run.metrics)
        by_kind["tags"].update(run.tags)
    own = difflib.get_close_matches(field.key, sorted(by_kind[field.kind]), n=n, cutoff=0.5)
    if own:
        return [f"{field.kind}.{k}" for k in own]
    others = [f"{kind}.{k}" for kind, keys in by_kind.items() if kind != field.kind for k in sorted(keys)]
    return difflib.get_close_matches(str(field), others, n=n, cutoff=0.6)


def unknown_key_messages(backend: Backend, experiment_ids: Sequence[str], expr: query.Expr,
                         found: Sequence[RunInfo] = ()) -> list[str]:
    """One sentence per key the filter names that no searched run has, with the closest existing keys."""
    out = []
    for field in missing_keys(backend, experiment_ids, expr, found):
        near = closest_keys(backend, experiment_ids, field)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        where = "the searched experiment" if len(experiment_ids) == 1 else "the searched experiments"
        out.append(f"no run in {where} has {field}{hint}")
    return out


def warn_unknown_keys(backend: Backend, experiment_ids: Sequence[str], expr: query.Expr,
                      stacklevel: int = 3, found: Sequence[RunInfo] = ()) -> None:
    """Warn (:class:`UnknownKeyWarning`) for each key of ``expr`` that no searched run has (``found``:
    the runs the search returned, see ``missing_keys``)."""
    for message in unknown_key_messages(backend, experiment_ids, expr, found):
        warnings.warn(message, UnknownKeyWarning, stacklevel=stacklevel)


_F = TypeVar("_F", bound=Callable[..., Any])


def names_store(method: _F) -> _F:
    """Make a ``NotFoundError`` out of ``method`` say which store was searched (``... in store
    sqlite:///lab/labvault.db``), so a wrong ``--uri`` or ``$LABVAULT_URI`` shows at once. The method's
    object must reach its vault as ``self`` (a Vault) or ``self.vault`` / ``self._vault``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except NotFoundError as exc:
            vault = getattr(self, "_vault", None) or getattr(self, "vault", None) or self
            where = redact(str(getattr(vault, "uri", "?")))
            if " in store " in str(exc):
                raise
            raise type(exc)(f"{exc} in store {where}") from exc

    return wrapper  # type: ignore[return-value]
