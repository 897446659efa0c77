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
from collections.abc import Iterator, Mapping, Sequence
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

    from labvault.api import Run, Vault
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


# -- db ----------------------------------------------------------------------------------------------------
_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, uri: UriOption = None) -> None:
    """Upgrade a SQL store's schema to this labvault's version (creating it if empty).

    A store made by an older labvault is never changed silently: opening it asks for this command.

    Example: labvault db upgrade --uri sqlite:///runs.db
    """
    out = _out()
    with _errors():
        scheme, resolved = labvault._resolve_uri(_given_uri(ctx, uri))
        if scheme.split("+", 1)[0] not in _SQL_SCHEMES:
            out.print(Text(f"{resolved} is a {scheme} store: it has no schema version, nothing to upgrade."))
            return
        from labvault.backends.sql import upgrade

        old, new = upgrade(resolved)
    if old == 0:
        out.print(Text(f"created a new store at {resolved} (schema version {new})."))
    elif old == new:
        out.print(Text(f"{resolved} is already at schema version {new}: nothing to do."))
    else:
        out.print(Text(f"upgraded {resolved} from schema version {old} to {new}.", style="green"))


# -- entry point -------------------------------------------------------------------------------------------
def main() -> None:
    """The ``labvault`` console script (and ``python -m labvault``)."""
    app(prog_name="labvault")


if __name__ == "__main__":  # pragma: no cover
    main()
