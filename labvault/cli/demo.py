"""``labvault demo``: a small real experiment, stored in full. A numpy logistic regression is trained by
mini-batch SGD on a synthetic 2-class data set over a grid of learning rate x L2 penalty; each run logs
params, tags, per-epoch metrics, results and artifacts (the weights, a report and an SVG plot of its loss
curves, drawn by hand so that no plotting library is needed). numpy loads only when the command runs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from labvault.cli.common import UriOption, cli_prefix, given_uri, open_vault, out
from labvault.cli.format import dumps, fmt_duration, jsonable, status_text

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from labvault.client.run import Experiment, Run
    from labvault.client.vault import Vault

__all__ = ["demo"]

#: The (learning rate, L2 penalty) pairs the demo trains, one run each.
_DEMO_GRID: tuple[tuple[float, float], ...] = tuple(
    (lr, l2) for lr in (0.003, 0.03, 0.3) for l2 in (0.0, 0.01)
)
#: Examples per SGD step.
_BATCH_SIZE = 64


class _Dataset:
    """A synthetic 2-class problem: a noisy linear boundary over features of mixed scales."""

    def __init__(self, seed: int, n_samples: int = 2000, n_features: int = 10, val_fraction: float = 0.2):
        import numpy as np  # lazy: numpy (~60 ms): not at CLI start

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
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def _log_loss(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], w: npt.NDArray[np.float64],
              b: float) -> float:
    """Mean binary cross-entropy of a logistic model, computed stably from the logits."""
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

    z = x @ w + b
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _accuracy(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], w: npt.NDArray[np.float64],
              b: float) -> float:
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

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
    from rich.progress import (  # lazy: rich.progress (~4 ms): only commands that show progress
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = out()
    data = _Dataset(seed)
    summaries: list[dict[str, Any]] = []
    with open_vault(ctx, uri) as vault:
        exp = vault.experiment(experiment)
        grid_params = {"lr": [lr for lr in sorted({g[0] for g in _DEMO_GRID})],
                       "l2": [l2 for l2 in sorted({g[1] for g in _DEMO_GRID})],
                       "epochs": epochs, "seed": seed}
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        with progress, exp.start_run(name="grid", params=grid_params,
                                     tags={"model": "logreg", "kind": "grid-search"}) as parent:
            task = progress.add_task("training", total=len(_DEMO_GRID) * epochs)
            for lr, l2 in _DEMO_GRID:
                summaries.append(_grid_point(exp, parent, data, lr, l2, epochs, seed, progress, task))
            summaries.sort(key=lambda s: -s["val_accuracy"] if math.isfinite(s["val_accuracy"]) else 1.0)
            best = summaries[0]
            parent.log_result("best", {"run_id": best["run"].id, "run_number": best["run"].number,
                                       "lr": best["lr"], "l2": best["l2"],
                                       "val_accuracy": best["val_accuracy"]})
            parent.set_tag("best_run", best["run"].id)
        _print_summary(console, experiment, parent, summaries)
        _print_next_steps(console, ctx, uri, vault, experiment, best["run"])


def _grid_point(exp: Experiment, parent: Run, data: _Dataset, lr: float, l2: float, epochs: int, seed: int,
                progress: Any, task: Any) -> dict[str, Any]:
    """Train and log one child run of the grid; its summary for the table."""
    params = {"lr": lr, "l2": l2, "epochs": epochs, "seed": seed, "batch_size": _BATCH_SIZE,
              "n_features": data.n_features, "n_samples": data.n_samples, "optimizer": "sgd"}
    with exp.start_run(name=f"lr_{lr:g} l2_{l2:g}", params=params, parent=parent,
                       tags={"model": "logreg", "dataset": "synthetic-2class"}) as run:
        progress.update(task, description=f"run #{run.number} lr={lr:g} l2={l2:g}")
        w, b, curves, val_acc = _train(run, data, lr, l2, epochs, seed, lambda: progress.advance(task))
        _log_outcome(run, data, params, w, b, curves, val_acc, f"lr={lr:g} l2={l2:g}")
    info = run.info
    return {"run": run, "lr": lr, "l2": l2, "val_accuracy": val_acc, "val_loss": curves["val_loss"][-1],
            "status": info.status, "duration": fmt_duration(info.start_time, info.end_time, info.status)}


def _train(
    run: Run, data: _Dataset, lr: float, l2: float, epochs: int, seed: int, advance: Callable[[], None]
) -> tuple[npt.NDArray[np.float64], float, dict[str, list[float]], float]:
    """SGD for ``epochs`` epochs, logging the metrics of each; (weights, bias, loss curves, val accuracy)."""
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

    rng = np.random.default_rng(seed)
    w = np.zeros(data.n_features)
    b = 0.0
    curves: dict[str, list[float]] = {"loss": [], "val_loss": []}
    val_acc = 0.0
    for epoch in range(1, epochs + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            b = _train_epoch(data, w, b, lr, l2, _BATCH_SIZE, rng)
            loss = _log_loss(data.x_train, data.y_train, w, b) + 0.5 * l2 * float(w @ w)
            val_loss = _log_loss(data.x_val, data.y_val, w, b)
            val_acc = _accuracy(data.x_val, data.y_val, w, b)
            acc = _accuracy(data.x_train, data.y_train, w, b)
        run.log_metrics({"loss": loss, "val_loss": val_loss, "accuracy": acc,
                         "val_accuracy": val_acc}, step=epoch)
        curves["loss"].append(loss)
        curves["val_loss"].append(val_loss)
        advance()
    return w, b, curves, val_acc


def _log_outcome(run: Run, data: _Dataset, params: Mapping[str, Any], w: npt.NDArray[np.float64], b: float,
                 curves: dict[str, list[float]], val_acc: float, title: str) -> None:
    """The trained run's results (confusion matrix, weight norm, final metrics) and artifacts."""
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

    confusion = _confusion(data.x_val, data.y_val, w, b)
    weights_norm = float(np.linalg.norm(w))
    run.log_result("confusion", confusion)
    run.log_result("weights_norm", weights_norm)
    run.log_result("final", {"val_accuracy": val_acc, "val_loss": curves["val_loss"][-1],
                             "loss": curves["loss"][-1]})
    model = {"weights": [float(x) for x in w], "bias": b, "features": data.n_features}
    run.log_artifact("model/weights.json", dumps(model).encode())
    report = {"run_id": run.id, "params": params, "val_accuracy": val_acc,
              "val_loss": curves["val_loss"][-1], "confusion": confusion,
              "weights_norm": weights_norm, "curves": curves}
    run.log_artifact("report.json", json.dumps(jsonable(report), indent=2).encode())
    run.log_artifact("plots/loss.svg", _svg_plot(curves, title))


def _print_summary(console: Console, experiment: str, parent: Run,
                   summaries: Sequence[Mapping[str, Any]]) -> None:
    """The grid's runs, best first, and the best one."""
    table = Table(title=f"experiment {experiment!r}: {len(summaries)} runs under parent "
                        f"#{parent.number}, by validation accuracy")
    for column in ("run", "lr", "l2", "val_accuracy", "val_loss", "status", "duration"):
        table.add_column(column, justify="left" if column in ("status",) else "right")
    for s in summaries:
        table.add_row(f"#{s['run'].number}", f"{s['lr']:g}", f"{s['l2']:g}",
                      f"{s['val_accuracy']:.4f}", f"{s['val_loss']:.4f}", status_text(s["status"]),
                      s["duration"])
    console.print(table)
    best = summaries[0]
    console.print(Text.assemble("best run: ", (best["run"].id, "bold green"),
                                f"  (#{best['run'].number}, lr={best['lr']:g}, l2={best['l2']:g}, "
                                f"val_accuracy={best['val_accuracy']:.4f})"), soft_wrap=True)


def _print_next_steps(console: Console, ctx: typer.Context, uri: str | None, vault: Vault, experiment: str,
                      best: Run) -> None:
    """Where the data went, and commands to explore it."""
    where = f"data lives in: {vault.uri}"
    if given_uri(ctx, uri) is None and not os.environ.get("LABVAULT_URI"):
        where += f" (the default ./labvault-data, relative to {Path.cwd()})"
    console.print(Text(where), soft_wrap=True)
    cli = cli_prefix(ctx, uri)
    exp_arg = shlex.quote(experiment)
    console.print(Text("next, try:", style="bold"))
    for line in (f"{cli} runs {exp_arg} --order-by \"metrics.val_accuracy desc\"",
                 f"{cli} show {best.id}",
                 f"{cli} artifacts ls {best.id}",
                 f"{cli} artifacts get {best.id} plots/loss.svg -o loss.svg"):
        console.print(Text(f"  {line}"), soft_wrap=True)
