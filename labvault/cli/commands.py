"""The ``labvault`` command line: a thin shell over the public API (``labvault.open`` and friends).

Every command takes ``--uri`` (default: ``$LABVAULT_URI``, else the embedded ``./labvault-data``).
A labvault error prints ``error: <ClassName>: <message>`` in red on stderr and exits with status 1;
bad usage exits with status 2. numpy and pandas load only inside the commands that need them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import labvault
from labvault.errors import InvalidArgumentError, LabvaultError, NotFoundError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from labvault.client.vault import Run, Vault
    from labvault.domain import ArtifactInfo, RunInfo

__all__ = ["app", "main"]

#: Default number of runs ``labvault runs`` shows.
DEFAULT_RUN_LIMIT = 100
#: How many params + metrics columns ``labvault runs`` shows when ``--columns`` is not given.
MAX_EXTRA_COLUMNS = 8
#: ``artifacts get -o`` shows a progress bar from this size on.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
_CHUNK = 1024 * 1024
_SHORT_ID = 8

_URI_HELP = (
    "Where the vault lives, e.g. ./labvault-data, sqlite:///runs.db or file://some/dir. "
    "Default: $LABVAULT_URI, else ./labvault-data (SQLite + local blobs)."
)
UriOption = Annotated[
    str | None, typer.Option("--uri", metavar="URI", help=_URI_HELP, show_default=False)
]

app = typer.Typer(
    name="labvault",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
artifacts_app = typer.Typer(
    help="List and download the files logged to a run (labvault artifacts ls RUN_ID).",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Maintain the store itself (labvault db upgrade).", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(db_app, name="db")


# -- plumbing ----------------------------------------------------------------------------------------------
def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(exc: BaseException | None = None, *, name: str | None = None, message: str = "") -> NoReturn:
    """Print ``error: <ClassName>: <message>`` in red on stderr and exit with status 1."""
    if exc is not None:
        name = type(exc).__name__
        message = str(exc)
    _err().print(Text(f"error: {name}: {message}", style="bold red"))
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn labvault errors into a one-line red message and exit status 1 (no traceback)."""
    try:
        yield
    except LabvaultError as exc:
        _fail(exc)


def _given_uri(ctx: typer.Context, uri: str | None) -> str | None:
    """The URI given to the command, else to ``labvault --uri ...``, else None (the library default)."""
    if uri is not None:
        return uri
    root = ctx.find_root().obj
    if isinstance(root, dict):
        value = root.get("uri")
        return value if isinstance(value, str) else None
    return None


@contextmanager
def _open_vault(ctx: typer.Context, uri: str | None) -> Iterator[Vault]:
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri))
        try:
            yield vault
        finally:
            vault.close()


def _find_run(vault: Vault, run_id: str) -> Run:
    """The run with this id, or the only run whose id starts with it (ids are shown shortened)."""
    try:
        return vault.get_run(run_id)
    except NotFoundError:
        if not (4 <= len(run_id) < 32 and run_id.isascii() and run_id.isalnum()):
            raise
        found = vault.search_runs(None, filter=f"id LIKE '{run_id}%'")
        matches = [r for r in found if r.id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(r.id for r in matches[:5])
            raise InvalidArgumentError(
                f"run id prefix {run_id!r} is ambiguous: it matches {len(matches)} runs ({shown}...)"
            ) from None
        raise


def _fmt_time(ts: float | None, seconds: bool = True) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(ts))


def _fmt_duration(start: float, end: float | None, status: str) -> str:
    if end is None:
        if status != "running":
            return "-"
        end = time.time()
    seconds = max(0.0, end - start)
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fmt_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _fmt_value(value: Any, width: int = 60) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt_number(value: Any) -> str:
    """Short numbers for tables (5 significant digits)."""
    if isinstance(value, float):
        return f"{value:.5g}"
    return _fmt_value(value, 40)


_STATUS_STYLE = {"finished": "green", "running": "yellow", "failed": "red", "killed": "magenta"}


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, unknown objects their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), allow_nan=False, ensure_ascii=False)


def _cli_prefix(ctx: typer.Context, uri: str | None) -> str:
    """``labvault`` plus ``--uri ...`` when the user named a store explicitly (for suggested commands)."""
    given = _given_uri(ctx, uri)
    return "labvault" if given is None else f"labvault --uri {shlex.quote(given)}"


# -- root --------------------------------------------------------------------------------------------------
def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"labvault {labvault.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    uri: UriOption = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the labvault version and exit."),
    ] = False,
) -> None:
    """labvault: keep everything an ML experiment produces behind one API with pluggable storage.

    Start with `labvault demo`, then explore: `labvault runs demo --order-by "metrics.val_accuracy desc"`.
    """
    ctx.obj = {"uri": uri}


# -- demo --------------------------------------------------------------------------------------------------
_DEMO_GRID: tuple[tuple[float, float], ...] = tuple(
    (lr, l2) for lr in (0.003, 0.03, 0.3) for l2 in (0.0, 0.01)
)


class _Dataset:
    """A synthetic 2-class problem: a noisy linear boundary over features of mixed scales."""

    def __init__(self, seed: int, n_samples: int = 2000, n_features: int = 10, val_fraction: float = 0.2):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.n_samples, self.n_features = n_samples, n_features
        scales = np.linspace(0.5, 2.0, n_features)
        x = rng.normal(size=(n_samples, n_features)) * scales
        w_true = rng.normal(size=n_features) / scales
        margin = x @ w_true + 0.4 * rng.normal(size=n_samples)
        y = (margin > 0).astype(np.float64)
        flip = rng.random(n_samples) < 0.03  # a little label noise: no run can be perfect
        y[flip] = 1.0 - y[flip]
        n_val = round(n_samples * val_fraction)
        order = rng.permutation(n_samples)
        val, train = order[:n_val], order[n_val:]
        self.x_train, self.y_train = x[train], y[train]
        self.x_val, self.y_val = x[val], y[val]


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import numpy as np

    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def _log_loss(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], w: npt.NDArray[np.float64],
              b: float) -> float:
    """Mean binary cross-entropy of a logistic model, computed stably from the logits."""
    import numpy as np

    z = x @ w + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _accuracy(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], w: npt.NDArray[np.float64],
              b: float) -> float:
    import numpy as np

    return float(np.mean(((x @ w + b) > 0).astype(np.float64) == y))


def _confusion(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], w: npt.NDArray[np.float64],
               b: float) -> list[list[int]]:
    """[[true negatives, false positives], [false negatives, true positives]]."""
    pred = (x @ w + b) > 0
    truth = y > 0.5
    return [[int((~truth & ~pred).sum()), int((~truth & pred).sum())],
            [int((truth & ~pred).sum()), int((truth & pred).sum())]]


def _train_epoch(data: _Dataset, w: npt.NDArray[np.float64], b: float, lr: float, l2: float,
                 batch_size: int, rng: np.random.Generator) -> float:
    """One epoch of mini-batch SGD on the L2-regularized log loss; updates ``w`` in place, returns b."""
    n = data.x_train.shape[0]
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        xb, yb = data.x_train[idx], data.y_train[idx]
        grad = _sigmoid(xb @ w + b) - yb
        w -= lr * (xb.T @ grad / len(idx) + l2 * w)
        b -= lr * float(grad.mean())
    return b


def _svg_plot(series: Mapping[str, Sequence[float]], title: str) -> bytes:
    """A small hand-written SVG line chart of per-epoch curves (no plotting library needed)."""
    width, height, left, right, top, bottom = 480, 300, 56, 16, 32, 40
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max((len(v) for v in series.values()), default=1)

    def px(i: int) -> float:
        return left + (width - left - right) * (i / max(1, n - 1))

    def py(value: float) -> float:
        value = min(max(value, lo), hi) if math.isfinite(value) else hi
        return top + (height - top - bottom) * (1 - (value - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{_xml(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
        f'<text x="{width / 2:.0f}" y="{height - 8}" text-anchor="middle">epoch</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = lo + (hi - lo) * frac
        parts.append(f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for i in (0, n - 1):
        parts.append(f'<text x="{px(i):.1f}" y="{height - bottom + 14}" text-anchor="middle">{i + 1}</text>')
    for k, (name, values) in enumerate(series.items()):
        color = colors[k % len(colors)]
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        y = top + 14 * k + 6
        parts.append(f'<line x1="{width - 120}" y1="{y}" x2="{width - 100}" y2="{y}" stroke="{color}" '
                     'stroke-width="2"/>')
        parts.append(f'<text x="{width - 96}" y="{y + 4}">{_xml(name)}</text>')
    parts.append("</svg>\n")
    return "\n".join(parts).encode()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@app.command()
def demo(
    ctx: typer.Context,
    uri: UriOption = None,
    experiment: Annotated[
        str, typer.Option("--experiment", "-e", metavar="NAME",
                          help="Experiment to log the runs to, e.g. -e demo2.")
    ] = "demo",
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, max=10_000, metavar="N",
                          help="Training epochs per run, e.g. --epochs 50.")
    ] = 30,
    seed: Annotated[
        int, typer.Option("--seed", min=0, metavar="N",
                          help="Seed of the synthetic data set and of SGD, e.g. --seed 7.")
    ] = 0,
) -> None:
    """Run a small real experiment and store everything it produces.

    Trains a numpy logistic regression on a synthetic 2-class data set (2,000 points, 10 features, 80/20
    train/validation split) over a 6-point grid of learning rate x L2 penalty. The 6 runs nest under one
    parent run "grid"; each logs params, tags, per-epoch loss / val_loss / val_accuracy, results (confusion
    matrix, weight norm) and artifacts (model/weights.json, report.json, plots/loss.svg).

    Example: labvault demo --epochs 50 --uri ./my-vault
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = _out()
    data = _Dataset(seed)
    batch_size = 64
    summaries: list[dict[str, Any]] = []
    with _open_vault(ctx, uri) as vault:
        exp = vault.experiment(experiment)
        grid_params = {"lr": [lr for lr in sorted({g[0] for g in _DEMO_GRID})],
                       "l2": [l2 for l2 in sorted({g[1] for g in _DEMO_GRID})],
                       "epochs": epochs, "seed": seed}
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=out, transient=True)
        with progress, exp.start_run(name="grid", params=grid_params,
                                     tags={"model": "logreg", "kind": "grid-search"}) as parent:
            task = progress.add_task("training", total=len(_DEMO_GRID) * epochs)
            for lr, l2 in _DEMO_GRID:
                params = {"lr": lr, "l2": l2, "epochs": epochs, "seed": seed, "batch_size": batch_size,
                          "n_features": data.n_features, "n_samples": data.n_samples, "optimizer": "sgd"}
                with exp.start_run(name=f"lr_{lr:g} l2_{l2:g}", params=params, parent=parent,
                                   tags={"model": "logreg", "dataset": "synthetic-2class"}) as run:
                    progress.update(task, description=f"run #{run.number} lr={lr:g} l2={l2:g}")
                    rng = np.random.default_rng(seed)
                    w = np.zeros(data.n_features)
                    b = 0.0
                    curves: dict[str, list[float]] = {"loss": [], "val_loss": []}
                    val_acc = 0.0
                    for epoch in range(1, epochs + 1):
                        with np.errstate(over="ignore", invalid="ignore"):
                            b = _train_epoch(data, w, b, lr, l2, batch_size, rng)
                            loss = _log_loss(data.x_train, data.y_train, w, b) + 0.5 * l2 * float(w @ w)
                            val_loss = _log_loss(data.x_val, data.y_val, w, b)
                            val_acc = _accuracy(data.x_val, data.y_val, w, b)
                            acc = _accuracy(data.x_train, data.y_train, w, b)
                        run.log_metrics({"loss": loss, "val_loss": val_loss, "accuracy": acc,
                                         "val_accuracy": val_acc}, step=epoch)
                        curves["loss"].append(loss)
                        curves["val_loss"].append(val_loss)
                        progress.advance(task)
                    confusion = _confusion(data.x_val, data.y_val, w, b)
                    weights_norm = float(np.linalg.norm(w))
                    run.log_result("confusion", confusion)
                    run.log_result("weights_norm", weights_norm)
                    run.log_result("final", {"val_accuracy": val_acc, "val_loss": curves["val_loss"][-1],
                                             "loss": curves["loss"][-1]})
                    model = {"weights": [float(x) for x in w], "bias": b, "features": data.n_features}
                    run.log_artifact("model/weights.json", _dumps(model).encode())
                    report = {"run_id": run.id, "params": params, "val_accuracy": val_acc,
                              "val_loss": curves["val_loss"][-1], "confusion": confusion,
                              "weights_norm": weights_norm, "curves": curves}
                    run.log_artifact("report.json", json.dumps(_jsonable(report), indent=2).encode())
                    run.log_artifact("plots/loss.svg", _svg_plot(curves, f"lr={lr:g} l2={l2:g}"))
                info = run.info
                summaries.append({"run": run, "lr": lr, "l2": l2, "val_accuracy": val_acc,
                                  "val_loss": curves["val_loss"][-1], "status": info.status,
                                  "duration": _fmt_duration(info.start_time, info.end_time, info.status)})
            summaries.sort(key=lambda s: -s["val_accuracy"] if math.isfinite(s["val_accuracy"]) else 1.0)
            best = summaries[0]
            parent.log_result("best", {"run_id": best["run"].id, "run_number": best["run"].number,
                                       "lr": best["lr"], "l2": best["l2"],
                                       "val_accuracy": best["val_accuracy"]})
            parent.set_tag("best_run", best["run"].id)

        table = Table(title=f"experiment {experiment!r}: {len(summaries)} runs under parent "
                            f"#{parent.number}, by validation accuracy")
        for column in ("run", "lr", "l2", "val_accuracy", "val_loss", "status", "duration"):
            table.add_column(column, justify="left" if column in ("status",) else "right")
        for s in summaries:
            table.add_row(f"#{s['run'].number}", f"{s['lr']:g}", f"{s['l2']:g}",
                          f"{s['val_accuracy']:.4f}", f"{s['val_loss']:.4f}", _status(s["status"]),
                          s["duration"])
        out.print(table)
        out.print(Text.assemble("best run: ", (best["run"].id, "bold green"),
                                f"  (#{best['run'].number}, lr={best['lr']:g}, l2={best['l2']:g}, "
                                f"val_accuracy={best['val_accuracy']:.4f})"), soft_wrap=True)
        where = f"data lives in: {vault.uri}"
        if _given_uri(ctx, uri) is None and not os.environ.get("LABVAULT_URI"):
            where += f" (the default ./labvault-data, relative to {Path.cwd()})"
        out.print(Text(where), soft_wrap=True)
        cli = _cli_prefix(ctx, uri)
        exp_arg = shlex.quote(experiment)
        out.print(Text("next, try:", style="bold"))
        for line in (f"{cli} runs {exp_arg} --order-by \"metrics.val_accuracy desc\"",
                     f"{cli} show {best['run'].id}",
                     f"{cli} artifacts ls {best['run'].id}",
                     f"{cli} artifacts get {best['run'].id} plots/loss.svg -o loss.svg"):
            out.print(Text(f"  {line}"), soft_wrap=True)


# -- experiments -------------------------------------------------------------------------------------------
@app.command()
def experiments(
    ctx: typer.Context,
    uri: UriOption = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", metavar="NAME",
                                 help="Only this project's experiments, e.g. -p vision.")
    ] = None,
) -> None:
    """List the experiments in the vault with their number of runs.

    Example: labvault experiments --project default
    """
    out = _out()
    with _open_vault(ctx, uri) as vault:
        found = vault.experiments(project)
        table = Table(title=f"{len(found)} experiment(s) in {vault.uri}")
        for column in ("project", "name", "id", "created", "runs"):
            table.add_column(column, justify="right" if column == "runs" else "left",
                             no_wrap=column in ("id", "created", "runs"))
        for exp in found:
            table.add_row(Text(exp.project), Text(exp.name), Text(exp.id), _fmt_time(exp.created_at, False),
                          str(len(exp.runs())))
        out.print(table)


# -- runs --------------------------------------------------------------------------------------------------
_BASE_FIELDS = ("number", "id", "name", "status", "start", "end", "duration", "parent_id", "experiment")
_PREFIXES = ("params", "metrics", "tags", "results")


def _parse_columns(spec: str) -> list[str]:
    columns = [c.strip() for c in spec.split(",") if c.strip()]
    if not columns:
        raise typer.BadParameter("give at least one column, e.g. --columns params.lr,metrics.acc")
    for column in columns:
        prefix, _, key = column.partition(".")
        if column in _BASE_FIELDS or (prefix in _PREFIXES and key):
            continue
        raise typer.BadParameter(
            f"unknown column {column!r}: use params.KEY, metrics.KEY, tags.KEY, results.KEY or one of "
            f"{', '.join(_BASE_FIELDS)}"
        )
    return columns


def _column_value(column: str, run: Run, info: RunInfo) -> Any:
    prefix, _, key = column.partition(".")
    if prefix in _PREFIXES and key:
        section: dict[str, Any] = getattr(info, prefix)
        return section.get(key)
    return {
        "number": info.number, "id": info.id, "name": info.name, "status": info.status,
        "start": info.start_time, "end": info.end_time, "parent_id": info.parent_id,
        "experiment": run.experiment.name,
        "duration": None if info.end_time is None else info.end_time - info.start_time,
    }[column]


def _column_cell(column: str, value: Any, info: RunInfo) -> Text | str:
    if column == "status":
        return _status(info.status)
    if column in ("start", "end"):
        return _fmt_time(value, seconds=False)
    if column == "duration":
        return _fmt_duration(info.start_time, info.end_time, info.status)
    if column in ("id", "parent_id") and isinstance(value, str):
        return Text(value[:_SHORT_ID])
    return Text(_fmt_number(value))


def _default_columns(infos: Sequence[RunInfo], mentioned: Sequence[str] = ()) -> list[str]:
    """Candidate columns, most telling first: those named in --order-by / --filter, params that differ
    between runs, metrics, the start time, then params that are the same everywhere."""
    param_keys = sorted({k for info in infos for k in info.params})
    metric_keys = sorted({k for info in infos for k in info.metrics})

    def varies(key: str) -> bool:
        seen = {json.dumps(_jsonable(i.params[key]), sort_keys=True) for i in infos if key in i.params}
        return len(seen) > 1

    varying = [k for k in param_keys if varies(k)]
    constant = [k for k in param_keys if not varies(k)]
    ranked = ([f"params.{k}" for k in varying] + [f"metrics.{k}" for k in metric_keys] + ["start"]
              + [f"params.{k}" for k in constant])
    first = [c for c in dict.fromkeys(mentioned) if c in ranked or c.startswith("tags.")]
    return first + [c for c in ranked if c not in first]


def _mentioned_columns(filter: str | None, order_by: Sequence[str]) -> list[str]:
    """params.x / metrics.x / tags.x named in the sort keys, then in the filter (plain keys only)."""
    found = re.findall(r"\b((?:params|metrics|tags)\.[A-Za-z0-9_.\-]*[A-Za-z0-9_])", " ".join(order_by))
    found += re.findall(r"\b((?:params|metrics|tags)\.[A-Za-z0-9_.\-]*[A-Za-z0-9_])", filter or "")
    return found


def _header(column: str) -> str:
    prefix, _, key = column.partition(".")
    return f"{prefix}\n{key}" if prefix in _PREFIXES and key else column


def _text_width(cell: Text | str) -> int:
    text = cell.plain if isinstance(cell, Text) else cell
    return max((len(line) for line in text.splitlines()), default=0)


def _fit(columns: list[str], widths: Mapping[str, int], budget: int | None, cap: int) -> list[str]:
    """The leading columns that fit in ``budget`` characters (each costs its width + 3), at most ``cap``."""
    chosen: list[str] = []
    used = 0
    for column in columns:
        cost = widths[column] + 3
        if len(chosen) >= cap:
            break
        if budget is not None and used + cost > budget and len(chosen) >= 2:
            continue  # too wide: a narrower column further down may still fit
        chosen.append(column)
        used += cost
    return chosen


def _run_record(run: Run, info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id, "experiment": run.experiment.name, "project": run.experiment.project,
        "number": info.number, "name": info.name, "parent_id": info.parent_id, "status": info.status,
        "start_time": info.start_time, "end_time": info.end_time, "error": info.error,
        "params": info.params, "tags": info.tags, "metrics": info.metrics, "results": info.results,
    }


@app.command()
def runs(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(metavar="EXPERIMENT",
                                              help="The experiment's name, e.g. demo.", show_default=False)],
    uri: UriOption = None,
    filter: Annotated[
        str | None,
        typer.Option("--filter", "-f", metavar="QUERY", help="Only runs matching this query, e.g. "
                     "\"params.lr > 0.01 and metrics.val_accuracy >= 0.9 and status = 'finished'\"."),
    ] = None,
    order_by: Annotated[
        list[str] | None,
        typer.Option("--order-by", "-o", metavar="KEY",
                     help="Sort key, repeatable, e.g. --order-by \"metrics.acc desc\" "
                     "--order-by params.lr (missing values last; default: run number)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, metavar="N",
                          help="Show at most N runs, e.g. --limit 10 (0: no limit).")
    ] = DEFAULT_RUN_LIMIT,
    columns: Annotated[
        str | None,
        typer.Option("--columns", "-c", metavar="COLS", help="Comma-separated columns after # and id, e.g. "
                     "params.lr,metrics.acc or tags.model,status,end (default: params that differ, then "
                     f"metrics, at most {MAX_EXTRA_COLUMNS})."),
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", metavar="NAME",
                                 help="The experiment's project, e.g. -p vision.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per run (JSON lines) instead of a table.")
    ] = False,
) -> None:
    """List an experiment's runs as a table, filtered and sorted.

    Example: labvault runs demo --filter "params.lr > 0.01" --order-by "metrics.val_accuracy desc" -n 5
    """
    chosen = _parse_columns(columns) if columns is not None else None
    with _open_vault(ctx, uri) as vault:
        found = vault.search_runs(experiment, filter=filter, order_by=order_by or None,
                                  limit=None if limit == 0 else limit + 1, project=project)
        more = limit != 0 and len(found) > limit
        selected = list(found)[:limit] if limit else list(found)
        infos = [run.info for run in selected]
        if as_json:
            for run, info in zip(selected, infos, strict=True):
                record = (_run_record(run, info) if chosen is None else
                          {"id": info.id, "number": info.number,
                           **{c: _column_value(c, run, info) for c in chosen}})
                typer.echo(_dumps(record))
            if more:
                _err().print(Text(f"(only the first {limit} runs; pass --limit 0 for all)", style="dim"))
            return
        fixed = ["name", "status", "duration"] if chosen is None else []
        candidates = (_default_columns(infos, _mentioned_columns(filter, order_by or []))
                      if chosen is None else chosen)
        rows = [(info, {c: _column_cell(c, _column_value(c, run, info), info) for c in fixed + candidates})
                for run, info in zip(selected, infos, strict=True)]
        widths = {c: max([_text_width(_header(c))] + [_text_width(cells[c]) for _, cells in rows])
                  for c in fixed + candidates}
        out = _out()
        interactive = out.is_terminal or "COLUMNS" in os.environ
        base = 4 + len(str(max((i.number for i in infos), default=1))) + 3 + _SHORT_ID + 3
        base += sum(min(widths[c], 24 if c == "name" else widths[c]) + 3 for c in fixed)
        shown = (_fit(candidates, widths, out.width - base if interactive else None, MAX_EXTRA_COLUMNS)
                 if chosen is None else candidates)
        hidden = len(candidates) - len(shown)
        columns_shown = fixed + shown
        if chosen is None and "start" in shown:  # fitted as a candidate, displayed next to the duration
            columns_shown.remove("start")
            columns_shown.insert(2, "start")
        if not interactive:  # piped or redirected: never fold cells, let the table be as wide as it needs
            total = base + sum(widths[c] + 3 for c in shown)
            out = Console(highlight=False, width=max(80, total))
        table = Table(title=f"experiment {experiment!r}: {len(selected)}{'+' if more else ''} run(s)")
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("id", no_wrap=True)
        for column in columns_shown:
            numeric = column.startswith(("params.", "metrics.", "results."))
            table.add_column(_header(column), justify="right" if numeric else "left",
                             no_wrap=column != "name", max_width=24 if column == "name" else None,
                             overflow="ellipsis")
        for info, cells in rows:
            table.add_row(str(info.number), Text(info.id[:_SHORT_ID]), *(cells[c] for c in columns_shown))
        out.print(table)
        notes = []
        if more:
            notes.append(f"showing the first {limit} runs (--limit 0 shows all)")
        if hidden:
            left_out = ", ".join(c for c in candidates if c not in shown)
            notes.append(f"{hidden} more column(s) left out to fit: "
                         + (left_out if len(left_out) < 200 else left_out[:197] + "...")
                         + " (choose with --columns)")
        for note in notes:
            _err().print(Text(note, style="dim"), soft_wrap=True)


# -- show --------------------------------------------------------------------------------------------------
@app.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID",
                                          help="The run's id, or a unique prefix of it (4+ characters).",
                                          show_default=False)],
    uri: UriOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the details as one JSON object.")] = False,
) -> None:
    """Show one run: ids, status, times, error, params, tags, results, metrics and artifacts.

    Example: labvault show 3f2a9c1e
    """
    with _open_vault(ctx, uri) as vault:
        run = _find_run(vault, run_id)
        info = run.info
        histories = {key: run.metric_history(key) for key in sorted(info.metrics)}
        artifacts = run.list_artifacts()
        children = vault.search_runs(run.experiment, filter=f"parent_id = '{info.id}'")
        if as_json:
            record = _run_record(run, info)
            record["metrics"] = {
                key: {"latest": info.metrics[key], "points": len(h),
                      "last_step": int(h.steps[-1]) if len(h) else None}
                for key, h in histories.items()
            }
            record["artifacts"] = [{"key": a.key, "size": a.size, "digest": a.digest,
                                    "created_at": a.created_at} for a in artifacts]
            record["children"] = [c.id for c in children]
            typer.echo(_dumps(record))
            return
        _print_run(run, info, histories, artifacts, [c.id for c in children])


def _print_run(run: Run, info: RunInfo, histories: Mapping[str, Any], artifacts: Sequence[ArtifactInfo],
               children: Sequence[str]) -> None:
    import numpy as np

    out = _out()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", Text(f"{info.id}  (#{info.number}{' ' + info.name if info.name else ''})"))
    head.add_row("experiment", Text(f"{run.experiment.project}/{run.experiment.name}  ({run.experiment.id})"))
    if info.parent_id:
        head.add_row("parent", Text(info.parent_id))
    if children:
        shown = ", ".join(c[:_SHORT_ID] for c in children[:10]) + (" ..." if len(children) > 10 else "")
        head.add_row("children", Text(f"{len(children)}: {shown}"))
    head.add_row("status", _status(info.status))
    head.add_row("start", _fmt_time(info.start_time))
    head.add_row("end", _fmt_time(info.end_time))
    head.add_row("duration", _fmt_duration(info.start_time, info.end_time, info.status))
    if info.error:
        head.add_row("error", Text(info.error, style="red"))
    out.print(head)

    for title, values in (("params", info.params), ("tags", info.tags), ("results", info.results)):
        if not values:
            out.print(Text(f"{title}: none", style="dim"))
            continue
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key in sorted(values):
            table.add_row(Text(key), Text(_fmt_value(values[key], 200)))
        out.print(table)

    if histories:
        table = Table(title="metrics", title_justify="left")
        for column in ("key", "latest", "last step", "points", "min", "max"):
            table.add_column(column, justify="left" if column == "key" else "right")
        for key, hist in histories.items():
            values = hist.values
            finite = values[np.isfinite(values)] if len(hist) else values
            table.add_row(Text(key), _fmt_value(info.metrics[key]),
                          str(int(hist.steps[-1])) if len(hist) else "-", str(len(hist)),
                          _fmt_value(float(finite.min())) if finite.size else "-",
                          _fmt_value(float(finite.max())) if finite.size else "-")
        out.print(table)
    else:
        out.print(Text("metrics: none", style="dim"))
    _print_artifacts(out, artifacts)


def _print_artifacts(out: Console, artifacts: Sequence[ArtifactInfo], title: str = "artifacts") -> None:
    if not artifacts:
        out.print(Text(f"{title}: none", style="dim"))
        return
    table = Table(title=title, title_justify="left")
    for column in ("key", "size", "digest", "created"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for art in artifacts:
        table.add_row(Text(art.key), _fmt_size(art.size), Text(art.digest[:12]), _fmt_time(art.created_at))
    out.print(table)


# -- artifacts ---------------------------------------------------------------------------------------------
@artifacts_app.command("ls")
def artifacts_ls(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID",
                                          help="The run's id (or a unique prefix).", show_default=False)],
    uri: UriOption = None,
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="PREFIX",
                          help="Only keys starting with this, e.g. --prefix plots/.")
    ] = "",
) -> None:
    """List a run's artifacts: key, size, digest and time.

    Example: labvault artifacts ls 3f2a9c1e --prefix model/
    """
    with _open_vault(ctx, uri) as vault:
        run = _find_run(vault, run_id)
        found = run.list_artifacts(prefix)
        total = sum(a.size for a in found)
        _print_artifacts(_out(), found, f"{len(found)} artifact(s) of run {run.id}, {_fmt_size(total)}")


@artifacts_app.command("get")
def artifacts_get(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID",
                                          help="The run's id (or a unique prefix).", show_default=False)],
    key: Annotated[
        str, typer.Argument(metavar="KEY",
                            help="The artifact's key, e.g. model/weights.json.", show_default=False)
    ],
    uri: UriOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE",
                     help="Write to this file instead of stdout, e.g. -o weights.json.",
                     dir_okay=False, show_default=False),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the --output file if it exists.")] = False,
) -> None:
    """Download an artifact (binary-safe, streamed, digest-verified) to a file or stdout.

    Example: labvault artifacts get 3f2a9c1e report.json -o report.json
    """
    with _open_vault(ctx, uri) as vault:
        run = _find_run(vault, run_id)
        if output is None:
            stream = typer.get_binary_stream("stdout")
            with run.open_artifact(key) as src:
                while chunk := src.read(_CHUNK):
                    stream.write(chunk)
            stream.flush()
            return
        if output.exists() and not force:
            _fail(name="FileExistsError", message=f"{output} exists; pass --force to replace it")
        size = next((a.size for a in run.list_artifacts(key) if a.key == key), None)
        if size is None:
            raise NotFoundError(f"run {run.id} has no artifact {key!r}")
        _download(run, key, output, size, force)
        _err().print(Text(f"wrote {output} ({_fmt_size(size)})"))


def _download(run: Run, key: str, output: Path, size: int, force: bool) -> None:
    """Stream into a temp file next to ``output``, then move it into place (never a partial file)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    directory = output.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        _fail(exc)
    tmp = Path(tmp_name)
    try:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=_err(), transient=True,
                            disable=size < PROGRESS_MIN_BYTES)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as dst, run.open_artifact(key) as src, progress:
            task = progress.add_task(key, total=size)
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                progress.advance(task, len(chunk))
        if force:
            os.replace(tmp, output)
        else:
            try:
                os.link(tmp, output)  # fails if output appeared meanwhile: never overwrite silently
            except FileExistsError:
                _fail(name="FileExistsError", message=f"{output} exists; pass --force to replace it")
            except OSError:  # no hard links here (some network or FAT file systems)
                if output.exists():
                    _fail(name="FileExistsError", message=f"{output} exists; pass --force to replace it")
                os.replace(tmp, output)
    except OSError as exc:
        _fail(exc)
    finally:
        tmp.unlink(missing_ok=True)


# -- transfers: artifacts put, blobs cp / ls, gc ----------------------------------------------------------
_ARTIFACTS_HELP = (
    "Where the vault keeps artifact bytes when not in its default place, e.g. "
    "s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333 or file:///mnt/blobs."
)
ArtifactsOption = Annotated[
    str | None, typer.Option("--artifacts", metavar="URL", help=_ARTIFACTS_HELP, show_default=False)
]

blobs_app = typer.Typer(
    help=(
        "Copy and list bytes in any blob store (file, s3, memory) by URL. A location is URL#KEY, e.g. "
        "s3://bucket/prefix#data/train.csv or file:///srv/blobs#a/b.bin, or a local path (no '#'), "
        "or '-' for stdin/stdout."
    ),
    no_args_is_help=True,
)
app.add_typer(blobs_app, name="blobs")


class _ProgressReader:
    """A binary file wrapper that advances a rich progress task as it is read."""

    def __init__(self, raw: Any, advance: Any) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        if data:
            self._advance(len(data))
        return data

    def close(self) -> None:
        self._raw.close()


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Any]:
    """A transient progress bar on stderr with size, rate and time left; yields an ``advance(n)``."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=_err(), transient=True,
                        disable=total is not None and total < PROGRESS_MIN_BYTES)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _source_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


@artifacts_app.command("put")
def artifacts_put(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID",
                                          help="The run's id (or a unique prefix).", show_default=False)],
    key: Annotated[
        str, typer.Argument(metavar="KEY", help="The artifact's key, e.g. plots/roc.png.", show_default=False)
    ],
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="The local file to upload, or - for stdin.",
                            show_default=False)
    ],
    uri: UriOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Upload a local file as an artifact of a run (streamed, content-addressed, deduplicated).

    Replaces an earlier artifact of the same key. Ctrl-C leaves nothing behind: the artifact is recorded
    only after its bytes are stored completely.

    Example: labvault artifacts put 3f2a9c1e model/weights.bin ./weights.bin
    """
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri), artifacts=artifacts)
        try:
            run = _find_run(vault, run_id)
            if path == "-":
                source: Any = typer.get_binary_stream("stdin")
                size = None
            else:
                file = Path(path)
                if not file.is_file():
                    raise InvalidArgumentError(f"{path!r} is not a readable file")
                size = _source_size(file)
                source = file.open("rb")
            try:
                with _progress(key, size) as advance:
                    info = run.log_artifact(key, _ProgressReader(source, advance))  # type: ignore[arg-type]
            finally:
                if path != "-":
                    source.close()
        finally:
            vault.close()
    _err().print(Text(f"stored {key} for run {run.id} ({_fmt_size(info.size)}, sha256 {info.digest[:12]})"))


def _parse_location(text: str) -> tuple[Any, str] | Path | None:
    """(store, key) for URL#KEY, a Path for a local path, None for '-' (stdin/stdout)."""
    import labvault.blobs

    if text == "-":
        return None
    split = labvault.blobs.split_location(text)
    if split is None:
        return Path(text)
    url, key = split
    store = labvault.blobs.open(url)
    store.info  # noqa: B018 - fail early on a store without the API
    from labvault.domain import validation as v

    v.validate_artifact_key(key)
    return store, key


@blobs_app.command("cp")
def blobs_cp(
    src: Annotated[str, typer.Argument(metavar="SRC", help="URL#KEY, a local path, or - (stdin).",
                                       show_default=False)],
    dst: Annotated[str, typer.Argument(metavar="DST", help="URL#KEY, a local path, or - (stdout).",
                                       show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
) -> None:
    """Copy bytes between blob stores and local files: streamed, atomic, with a progress bar.

    A location is URL#KEY (a key inside the blob store the URL opens), a local path, or - for
    stdin (SRC) / stdout (DST). Within one store the copy runs server-side. DST is never replaced unless
    --force is given (checked atomically: a conditional write). Ctrl-C leaves no partial DST: blob
    stores publish an object only once it is complete (S3 multipart uploads are aborted) and local
    files are written to a temporary name first.

    \b
    Examples:
      labvault blobs cp ./train.csv "s3://data/sets?endpoint_url=http://127.0.0.1:8333#train.csv"
      labvault blobs cp "s3://data/sets#train.csv" ./copy.csv
      labvault blobs cp "file:///srv/blobs#a/b.bin" "s3://backup#a/b.bin" --force
    S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, the endpoint
    from ?endpoint_url= or AWS_ENDPOINT_URL.
    """
    with _errors():
        source = _parse_location(src)
        target = _parse_location(dst)
        if source is None and target is None:
            raise InvalidArgumentError("SRC and DST cannot both be - ; name a file or a URL#KEY")
        # -- where the bytes come from
        size: int | None = None
        if source is None:
            reader: Any = typer.get_binary_stream("stdin")
            label = "stdin"
        elif isinstance(source, Path):
            if not source.is_file():
                raise InvalidArgumentError(f"{src!r} is not a readable file")
            size = _source_size(source)
            reader = None
            label = source.name
        else:
            store, key = source
            size = store.info(key).size
            reader = None
            label = key
        if isinstance(target, Path) and target.exists() and not force:
            _fail(name="FileExistsError", message=f"{target} exists; pass --force to replace it")
        if isinstance(target, tuple) and not force and target[0].exists(target[1]):
            _fail(name="ConflictError", message=f"{dst} exists; pass --force to replace it")
        # -- same store: server-side copy
        if isinstance(source, tuple) and isinstance(target, tuple) and _same_store(source[0], target[0]):
            copied = target[0].copy(source[1], target[1])
            _err().print(Text(f"copied {label} ({_fmt_size(copied)}) within the store"))
            return
        opened: Any = None
        try:
            if reader is None:
                if isinstance(source, Path):
                    opened = source.open("rb")
                else:
                    assert isinstance(source, tuple)
                    opened = source[0].open(source[1])
                reader = opened
            with _progress(label, size) as advance:
                stream = _ProgressReader(reader, advance)
                if target is None:
                    out = typer.get_binary_stream("stdout")
                    while chunk := stream.read(_CHUNK):
                        out.write(chunk)
                    out.flush()
                    return
                if isinstance(target, Path):
                    written = _write_local(stream, target, force)
                else:
                    store, key = target
                    written = store.put(key, stream, if_absent=not force)
        finally:
            if opened is not None:
                opened.close()
    _err().print(Text(f"copied {label} -> {dst} ({_fmt_size(written)})"))


def _same_store(a: Any, b: Any) -> bool:
    """Whether two opened stores address the same place (so a server-side copy works)."""
    if type(a) is not type(b):
        return False
    for attrs in (("bucket", "endpoint_url"), ("root",)):
        if all(hasattr(a, n) and hasattr(b, n) for n in attrs):
            if all(getattr(a, n) == getattr(b, n) for n in attrs):
                return not hasattr(a, "prefix") or a.prefix == b.prefix
            return False
    return False


def _write_local(stream: Any, target: Path, force: bool) -> int:
    """Stream into a temp file beside ``target``, then publish it (never a partial file)."""
    if target.is_dir():
        raise InvalidArgumentError(f"{target} is a directory; name the file to write")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
                size += len(chunk)
        if force:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                _fail(name="FileExistsError", message=f"{target} exists; pass --force to replace it")
        return size
    finally:
        tmp.unlink(missing_ok=True)


@blobs_app.command("ls")
def blobs_ls(
    url: Annotated[str, typer.Argument(metavar="URL", help="The blob store, e.g. s3://bucket/prefix.",
                                       show_default=False)],
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="Only keys starting with this.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per blob.")] = False,
) -> None:
    """List the blobs of a store: key, size, last write time and digest (sha256, or the etag).

    Example: labvault blobs ls "s3://bucket/runs?endpoint_url=http://127.0.0.1:8333" sha256/
    """
    import labvault.blobs

    with _errors():
        store = labvault.blobs.open(url)
        found = list(store.scan(prefix))
    if as_json:
        for b in found:
            typer.echo(_dumps({"key": b.key, "size": b.size, "digest": b.digest, "modified": b.modified,
                               "etag": b.etag}))
        return
    total = sum(b.size for b in found)
    table = Table(title=f"{len(found)} blob(s), {_fmt_size(total)}", title_justify="left")
    for column in ("key", "size", "modified", "digest"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for b in found:
        table.add_row(Text(b.key), _fmt_size(b.size), _fmt_time(b.modified), Text(b.digest[:16]))
    _out().print(table)


@app.command("gc")
def gc_command(
    ctx: typer.Context,
    uri: UriOption = None,
    artifacts: ArtifactsOption = None,
    grace: Annotated[
        float, typer.Option("--grace", metavar="HOURS", min=0.0,
                            help="Keep blobs written less than this many hours ago (protects a writer "
                                 "running now).")
    ] = 24.0,
    delete: Annotated[bool, typer.Option("--delete", help="Really delete (default: a dry run).")] = False,
) -> None:
    """Remove artifact blobs that no run references any more (after deleted runs or experiments).

    A dry run by default: prints what would be deleted and the bytes it would free. Blobs written within
    --grace hours are kept, so a collection is safe beside processes logging artifacts. If several vaults
    share one artifact store, a blob only another vault uses looks unreferenced: do not collect such a
    store from one vault.

    Example: labvault gc --uri sqlite:///runs.db --artifacts s3://bucket/blobs --delete
    """
    from labvault.client.gc import collect_garbage

    out = _out()
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri), artifacts=artifacts)
        try:
            report = collect_garbage(vault, grace_hours=grace, delete=delete)
        finally:
            vault.close()
    verb = "deleted" if report.deleted else "would delete"
    for blob in report.garbage:
        out.print(Text(f"{verb} {blob.key} ({_fmt_size(blob.size)}, written {_fmt_time(blob.modified)})"))
    summary = (f"{verb} {len(report.garbage)} unreferenced blob(s), {_fmt_size(report.bytes_freed)} "
               f"{'freed' if report.deleted else 'to free'}; {len(report.recent)} kept inside the "
               f"{grace:g} h grace period; {report.referenced} referenced of {report.scanned} stored")
    out.print(Text(summary, style="green" if report.deleted else ""))
    if report.missing:
        out.print(Text(f"warning: {len(report.missing)} referenced blob(s) are missing from the store, "
                       f"e.g. {report.missing[0]}", style="yellow"))
    if not report.deleted and report.garbage:
        out.print(Text("dry run: pass --delete to delete them", style="dim"))


# -- db ----------------------------------------------------------------------------------------------------
_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, uri: UriOption = None) -> None:
    """Upgrade a SQL store's schema (SQLite or PostgreSQL) to this labvault's version, creating it if empty.

    A store made by an older labvault is never changed silently: opening it asks for this command. Safe
    to run from several processes at once (PostgreSQL: under an advisory lock; the others find nothing to
    do). Passwords in the URI are never printed.

    Example: labvault db upgrade --uri sqlite:///runs.db
    (or --uri postgresql://lab@db.example.org:5432/labvault)
    """
    from labvault._uri import resolve_uri

    out = _out()
    with _errors():
        scheme, resolved = resolve_uri(_given_uri(ctx, uri))
        shown = resolved
        if "@" in resolved and "://" in resolved:  # user:password@host: hide the password
            from sqlalchemy.engine import make_url

            try:
                shown = make_url(resolved).render_as_string(hide_password=True)
            except Exception:
                shown = resolved.split("://", 1)[0] + "://***@" + resolved.rsplit("@", 1)[1]
        if scheme.split("+", 1)[0] not in _SQL_SCHEMES:
            out.print(Text(f"{shown} is a {scheme} store: it has no schema version, nothing to upgrade."))
            return
        from labvault.store.sql.backend import upgrade

        old, new = upgrade(resolved)
    if old == 0:
        out.print(Text(f"created a new store at {shown} (schema version {new})."))
    elif old == new:
        out.print(Text(f"{shown} is already at schema version {new}: nothing to do."))
    else:
        out.print(Text(f"upgraded {shown} from schema version {old} to {new}.", style="green"))


# -- server, users, tokens, login (issue 6) ----------------------------------------------------------------
users_app = typer.Typer(
    help="Users of a labvault server and their roles (reader, writer, admin), kept in its auth store.",
    no_args_is_help=True,
)
tokens_app = typer.Typer(
    help="API tokens of a labvault server's users (shown once when created; stored hashed).",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")

AuthDbOption = Annotated[
    Path | None,
    typer.Option("--auth-db", metavar="PATH", envvar="LABVAULT_AUTH_DB", show_default=False,
                 help="The server's auth store (SQLite). Default: $LABVAULT_AUTH_DB, else auth.db in the "
                      "user's config dir (~/.config/labvault)."),
]
_ROLE_HELP = "reader (read), writer (read and write runs), admin (also deletes, users and tokens)."


def _auth_store(auth_db: Path | None) -> Any:
    from labvault.server.auth import AuthStore, default_auth_db

    return AuthStore(auth_db if auth_db is not None else default_auth_db())


@app.command()
def server(
    backend: Annotated[
        str | None,
        typer.Option("--backend", metavar="URI", show_default=False,
                     help="The store to serve, e.g. postgresql://user@db/labvault or sqlite:///runs.db. "
                          "Default: $LABVAULT_URI."),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option("--artifacts", metavar="URI", show_default=False,
                     help="Keep artifact bytes in this blob store (e.g. s3://bucket/prefix) instead."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64,
                                         help="Worker processes (the server is stateless).")] = 1,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="No authentication at all (every caller is an admin). "
                                        "Only on 127.0.0.1; for trying things out."),
    ] = False,
    certfile: Annotated[Path | None, typer.Option("--certfile", metavar="PEM", show_default=False,
                                                  help="TLS certificate (serve https).")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", metavar="PEM", show_default=False,
                                                 help="TLS private key.")] = None,
    auth_db: AuthDbOption = None,
    max_request_mb: Annotated[float, typer.Option("--max-request-mb", min=0.001,
                                                  help="Largest JSON / metric batch body (MB).")] = 64.0,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.0,
                                                 help="Largest single upload (MB); 0: no limit.")] = 0.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a store over HTTP: a REST API (/api/v1, OpenAPI at /api/v1/openapi.json) with token auth.

    There are no default users: add one first (labvault users add ana --role admin; labvault tokens
    create ana). Without users the server refuses to start unless --insecure (loopback only).

    Example: labvault server --backend postgresql://lab@db/labvault --artifacts s3://lab-artifacts
    --host 0.0.0.0 --port 8443 --workers 4 --certfile cert.pem --keyfile key.pem
    """
    from labvault.server.app import ServerConfig, config_to_env, create_app, is_loopback

    err = _err()
    uri = backend or os.environ.get("LABVAULT_URI") or None
    if not uri:
        _fail(name="InvalidArgumentError",
              message="say which store to serve: --backend URI (or set LABVAULT_URI)")
    if (certfile is None) != (keyfile is None):
        _fail(name="InvalidArgumentError", message="TLS needs both --certfile and --keyfile")
    for tls_file in (certfile, keyfile):
        if tls_file is not None and not tls_file.is_file():
            _fail(name="InvalidArgumentError", message=f"{str(tls_file)!r} is not a readable file")
    config = ServerConfig(max_request_size=int(max_request_mb * 1024 * 1024),
                          max_upload_size=int(max_upload_mb * 1024 * 1024) or None)
    store_path = None
    with _errors():
        if insecure:
            if not is_loopback(host):
                _fail(name="InvalidArgumentError",
                      message=f"--insecure serves without authentication, so only on 127.0.0.1, not {host!r}")
            err.print(Text("WARNING: --insecure: this server has NO AUTHENTICATION; every caller is an "
                           f"admin. It listens on {host} only.", style="bold red"))
        else:
            store = _auth_store(auth_db)
            store_path = store.path
            if not store.has_users():
                _fail(name="AuthenticationError",
                      message=f"the auth store {str(store.path)!r} has no users, and a server without users "
                              "would refuse everyone. Add one: labvault users add NAME --role admin; then "
                              "labvault tokens create NAME. (Or --insecure for a loopback-only trial.)")
            store.close()
        probe = labvault.open_backend(uri, artifacts=artifacts)  # fail fast on a wrong URI or a dead database
        try:
            probe.list_experiments()
        finally:
            probe.close()
    scheme = "https" if certfile else "http"
    err.print(Text(f"labvault server {labvault.__version__}: {scheme}://{host}:{port}/api/v1 serving "
                   f"{uri.split('://', 1)[0]} ({workers} worker(s); auth: "
                   f"{'NONE' if insecure else f'tokens from {store_path}'})"))
    import uvicorn

    ssl: dict[str, Any] = {}
    if certfile is not None and keyfile is not None:
        ssl = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    # Idle keep-alive connections live 75 s on the server, longer than the 5 s clients (httpx) keep them: the
    # client always drops an idle connection first, so a request never meets a connection the server is
    # closing (a lost race would fail a metric flush, which is not retried). With 5 s, the load test
    # (benchmarks/load.py, 50 clients on an overloaded machine) saw a few connections closed mid-request.
    common: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "timeout_keep_alive": 75,
                              "timeout_graceful_shutdown": 5, "server_header": False, **ssl}
    if workers == 1:
        with _errors():
            application = create_app(uri, artifacts=artifacts, auth=store_path, insecure=insecure,
                                     config=config)
        uvicorn.run(application, **common)
        return
    os.environ.update({
        "LABVAULT_SERVER_BACKEND": uri, "LABVAULT_SERVER_ARTIFACTS": artifacts or "",
        "LABVAULT_SERVER_INSECURE": "1" if insecure else "0", "LABVAULT_SERVER_CONFIG": config_to_env(config),
    })
    if store_path is not None:
        os.environ["LABVAULT_AUTH_DB"] = str(store_path)
    uvicorn.run("labvault.server.app:create_app_from_env", factory=True, workers=workers, **common)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="User name.", show_default=False)],
    role: Annotated[str, typer.Option("--role", metavar="ROLE", help=_ROLE_HELP)] = "reader",
    auth_db: AuthDbOption = None,
) -> None:
    """Add a user with a role. Then give them a token: labvault tokens create NAME."""
    with _errors():
        store = _auth_store(auth_db)
        store.add_user(name, role)
    _out().print(Text(f"added user {name!r} ({role}) to {store.path}"))


@users_app.command("list")
def users_list(auth_db: AuthDbOption = None) -> None:
    """List users, their roles and how many live tokens each has."""
    with _errors():
        store = _auth_store(auth_db)
        users = store.users()
        tokens = store.tokens()
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("user", "role", "tokens", "created"):
        table.add_column(column)
    for name, role, created in users:
        live = sum(1 for t in tokens if t.user == name and t.revoked_at is None
                   and (t.expires_at is None or t.expires_at > now))
        table.add_row(Text(name), role, str(live), _fmt_time(created))
    _out().print(table)


@users_app.command("set-role")
def users_set_role(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    role: Annotated[str, typer.Argument(metavar="ROLE", help=_ROLE_HELP, show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Change a user's role (takes effect on their next request)."""
    with _errors():
        _auth_store(auth_db).set_role(name, role)
    _out().print(Text(f"user {name!r} is now {role}"))


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Remove a user and every token of theirs."""
    with _errors():
        _auth_store(auth_db).remove_user(name)
    _out().print(Text(f"removed user {name!r} and their tokens"))


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user the token acts as.",
                                        show_default=False)],
    description: Annotated[str | None, typer.Option("--description", metavar="TEXT",
                                                    help="What the token is for.")] = None,
    expires_days: Annotated[float | None, typer.Option("--expires-days", metavar="DAYS", min=0.0001,
                                                       help="Expire after this many days.")] = None,
    auth_db: AuthDbOption = None,
) -> None:
    """Issue a token for a user and print it once (stdout); only a hash of it is stored.

    Example: export LABVAULT_TOKEN=$(labvault tokens create ana --description laptop)
    """
    with _errors():
        store = _auth_store(auth_db)
        token_id, token = store.create_token(name, description,
                                             None if expires_days is None else expires_days * 86400)
    typer.echo(token)
    _err().print(Text(f"token {token_id} for {name!r}: shown only now; revoke it with "
                      f"labvault tokens revoke {token_id}", style="yellow"))


@tokens_app.command("list")
def tokens_list(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this user's tokens.",
                                               show_default=False)] = None,
    auth_db: AuthDbOption = None,
) -> None:
    """List tokens (ids, users, state), never their secrets."""
    with _errors():
        tokens = _auth_store(auth_db).tokens(name)
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("id", "user", "state", "created", "description"):
        table.add_column(column)
    for t in tokens:
        state = ("revoked" if t.revoked_at is not None
                 else "expired" if t.expires_at is not None and t.expires_at <= now else "active")
        table.add_row(t.id, Text(t.user), state, _fmt_time(t.created_at), Text(t.description or ""))
    _out().print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The 12 hex digits after 'lv_'.",
                                            show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Revoke a token: every server using this auth store refuses it from the next request on."""
    with _errors():
        _auth_store(auth_db).revoke_token(token_id)
    _out().print(Text(f"revoked token {token_id}"))


@app.command()
def login(
    url: Annotated[str, typer.Argument(metavar="URL", help="The server, e.g. https://lab.example:8443.",
                                       show_default=False)],
    token: Annotated[str | None, typer.Option("--token", metavar="TOKEN", show_default=False,
                                              help="The token (default: $LABVAULT_TOKEN, else a prompt).")]
    = None,
) -> None:
    """Check a token against a server and store it (mode 0600) for every later command on that URL.

    Example: labvault login https://lab.example:8443, then labvault --uri https://lab.example:8443 runs exp
    """
    from labvault.store.http.backend import HTTPBackend
    from labvault.store.http.credentials import save_token

    with _errors():
        secret = token or os.environ.get("LABVAULT_TOKEN") or typer.prompt("token", hide_input=True)
        probe = HTTPBackend(url, token=secret.strip())
        try:
            info = probe.server_info()
        finally:
            probe.close()
        user = info.get("user") or {}
        path = save_token(url, secret.strip(), user.get("name"))
    _out().print(Text(f"logged in to {probe.base_url} as {user.get('name')!r} ({user.get('role')}); "
                      f"token saved in {path}", style="green"))


@app.command()
def logout(
    url: Annotated[str, typer.Argument(metavar="URL", show_default=False)],
) -> None:
    """Forget the token stored for a server."""
    from labvault.store.http.credentials import forget_token

    with _errors():
        had = forget_token(url)
    _out().print(Text(f"forgot the token of {url}" if had else f"no token was stored for {url}"))


# -- sync: push / pull / status / copy ----------------------------------------------------------------------
_REMOTE_HELP = "The remote store, e.g. http://server:8000 or postgresql://... Default: $LABVAULT_REMOTE."
RemoteOption = Annotated[
    str | None, typer.Option("--remote", "-r", metavar="URI", help=_REMOTE_HELP, show_default=False)
]
ConflictOption = Annotated[
    str | None, typer.Option("--on-conflict", metavar="ours|theirs", show_default=False,
                             help="Resolve runs whose params/tags changed on both sides: keep the local "
                                  "value (ours) or the remote one (theirs). Default: stop with an error.")
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", metavar="NAME", help="The experiments' project.")
]
WorkersOption = Annotated[
    int, typer.Option("--workers", "-w", min=1, max=64, help="Runs sent at once (parents before children).")
]


def _sync_remote(remote: str | None) -> str:
    found = remote or os.environ.get("LABVAULT_REMOTE") or None
    if not found:
        _fail(name="InvalidArgumentError", message="no remote: pass --remote URI or set $LABVAULT_REMOTE")
    return found


def _on_conflict(value: str | None) -> Any:
    if value not in (None, "ours", "theirs"):
        _fail(name="InvalidArgumentError", message=f"--on-conflict must be ours or theirs, got {value!r}")
    return value


@contextmanager
def _sync_progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar over runs, driven by the sync ``progress(phase, done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                   TimeElapsedColumn(), console=_err(), transient=True)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        task = tasks.get(phase)
        if task is None:
            task = tasks[phase] = bar.add_task(f"{description}", total=total)
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _print_report(report: Any) -> None:
    verb = {"push": "pushed", "pull": "pulled", "copy": "copied"}.get(report.direction, report.direction)
    exps = ", ".join(report.experiments) or "nothing"
    if not report.changed:
        _out().print(Text(f"{exps}: already up to date ({report.runs_unchanged} run(s) unchanged)",
                          style="green"))
        return
    line = (f"{verb} {exps}: {report.runs_created} run(s) created, {report.runs_updated} updated, "
            f"{report.runs_unchanged} unchanged; {report.points_sent:,} metric point(s), "
            f"{report.blobs_sent} blob(s) ({_fmt_size(report.bytes_sent)})")
    _out().print(Text(line, style="green"))
    if report.conflicts_resolved:
        _out().print(Text(f"resolved {len(report.conflicts_resolved)} conflict(s): "
                          + ", ".join(report.conflicts_resolved), style="yellow"))


@app.command()
def push(
    ctx: typer.Context,
    experiments: Annotated[list[str] | None, typer.Argument(metavar="EXPERIMENT",
                                                            help="Default: every experiment.")] = None,
    uri: UriOption = None,
    remote: RemoteOption = None,
    project: ProjectOption = None,
    on_conflict: ConflictOption = None,
    workers: WorkersOption = 4,
) -> None:
    """Upload experiments to the remote: only runs changed since the last sync, only missing points and
    blobs. Safe to repeat and to restart after an interruption.

    Example: labvault push mnist --remote http://server:8000
    """
    target = _sync_remote(remote)
    resolve = _on_conflict(on_conflict)
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri), remote=target)
        try:
            with _sync_progress(f"push to {target}") as progress:
                report = vault.push(experiments or None, project=project, on_conflict=resolve,
                                    progress=progress, workers=workers)
        finally:
            vault.close()
    _print_report(report)


@app.command()
def pull(
    ctx: typer.Context,
    experiments: Annotated[list[str] | None, typer.Argument(
        metavar="EXPERIMENT|URL", help="Names or <remote>#<project>/<name> URLs. Default: every "
                                            "experiment of the remote.")] = None,
    uri: UriOption = None,
    remote: RemoteOption = None,
    project: ProjectOption = None,
    on_conflict: ConflictOption = None,
    workers: WorkersOption = 4,
) -> None:
    """Download experiments from the remote when they are newer there (or missing here).

    Example: labvault pull mnist --remote http://server:8000
    """
    names = list(experiments or [])
    needs_remote = not names or any("#" not in n for n in names)
    target = _sync_remote(remote) if needs_remote else remote
    resolve = _on_conflict(on_conflict)
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri), remote=target)
        try:
            if not names:
                assert target is not None
                listing = labvault.open_backend(target)
                try:
                    names = [e.name for e in listing.list_experiments(project)]
                finally:
                    listing.close()
            for name in names:
                with _sync_progress(f"pull {name}") as progress:
                    vault.pull(name, project=project, on_conflict=resolve, progress=progress,
                               workers=workers)
                _print_report(vault.last_sync)
        finally:
            vault.close()


@app.command()
def status(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(metavar="EXPERIMENT", show_default=False)],
    uri: UriOption = None,
    remote: RemoteOption = None,
    project: ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per run: in sync, ahead (changed here), behind (changed on the remote) or diverged (both).

    Example: labvault status mnist --remote http://server:8000
    """
    target = _sync_remote(remote)
    style = {"in sync": "green", "ahead": "cyan", "behind": "yellow", "diverged": "bold red"}
    with _errors():
        vault = labvault.open(_given_uri(ctx, uri), remote=target)
        try:
            found = vault.sync_status(experiment, project=project)
        finally:
            vault.close()
    if as_json:
        _out().print_json(data=[{"run_id": s.run_id, "name": s.name, "state": s.state,
                                 "local_revision": s.local_revision, "remote_revision": s.remote_revision,
                                 "changed": s.changed, "conflicts": s.conflicts} for s in found])
        return
    table = Table(title=f"{experiment}: {vault.uri} vs {target}")
    for column in ("run", "name", "state", "changed", "conflicts"):
        table.add_column(column, no_wrap=column in ("run", "state"))
    for s in found:
        table.add_row(s.run_id[:_SHORT_ID], Text(s.name or "-"), Text(s.state, style=style[s.state]),
                      Text(", ".join(s.changed) or "-"), Text(", ".join(s.conflicts) or "-"))
    _out().print(table)


@app.command("copy")
def copy_cmd(
    source: Annotated[str, typer.Argument(metavar="SRC_URI", show_default=False)],
    destination: Annotated[str, typer.Argument(metavar="DST_URI", show_default=False)],
    experiment: Annotated[list[str] | None, typer.Option(
        "--experiment", "-e", metavar="NAME", help="Only this experiment (repeatable).")] = None,
    project: ProjectOption = None,
    on_conflict: ConflictOption = None,
    workers: WorkersOption = 4,
) -> None:
    """Copy a whole vault (or some experiments) to another store, any backend to any backend. Run ids are
    kept; copying again sends nothing new.

    Example: labvault copy ./labvault-data postgresql://db/team
    """
    resolve = "ours" if on_conflict == "ours" else ("theirs" if on_conflict == "theirs" else None)
    _on_conflict(on_conflict)
    with _errors(), _sync_progress(f"copy to {destination}") as progress:
        report = labvault.copy(source, destination, experiment or None, project=project,
                               on_conflict=resolve, progress=progress, workers=workers)
    _print_report(report)


# -- entry point -------------------------------------------------------------------------------------------
def main() -> None:
    """The ``labvault`` console script (and ``python -m labvault``)."""
    app(prog_name="labvault")


if __name__ == "__main__":  # pragma: no cover
    main()
