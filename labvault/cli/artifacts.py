"""``labvault artifacts ls / get / put``: the files logged to a run, listed, downloaded and uploaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from labvault.cli.common import ArtifactsOption, UriOption, err, fail, find_run, open_vault, out
from labvault.cli.format import fmt_size, print_artifacts
from labvault.cli.transfer import (
    ProgressReader,
    copy_stream,
    progress,
    publish,
    refuse_existing,
    source_size,
    temp_beside,
    to_stdout,
)
from labvault.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from labvault.client.run import Run

__all__ = ["artifacts_app"]

#: ``labvault artifacts``.
artifacts_app = typer.Typer(
    help="List and download the files logged to a run (labvault artifacts ls RUN_ID).",
    no_args_is_help=True,
)

_RunIdArgument = Annotated[
    str, typer.Argument(metavar="RUN_ID", help="The run's id (or a unique prefix).", show_default=False)
]


@artifacts_app.command("ls")
def artifacts_ls(
    ctx: typer.Context,
    run_id: _RunIdArgument,
    uri: UriOption = None,
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="PREFIX",
                          help="Only keys starting with this, e.g. --prefix plots/.")
    ] = "",
) -> None:
    """List a run's artifacts: key, size, digest and time.

    Example: labvault artifacts ls 3f2a9c1e --prefix model/
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        found = run.list_artifacts(prefix)
        total = sum(a.size for a in found)
        print_artifacts(out(), found, f"{len(found)} artifact(s) of run {run.id}, {fmt_size(total)}")


@artifacts_app.command("get")
def artifacts_get(
    ctx: typer.Context,
    run_id: _RunIdArgument,
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
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        if output is None:
            with run.open_artifact(key) as src:
                to_stdout(src)
            return
        if output.exists() and not force:
            refuse_existing(output)
        size = next((a.size for a in run.list_artifacts(key) if a.key == key), None)
        if size is None:
            raise NotFoundError(f"run {run.id} has no artifact {key!r}")
        _download(run, key, output, size, force)
        err().print(Text(f"wrote {output} ({fmt_size(size)})"))


def _download(run: Run, key: str, output: Path, size: int, force: bool) -> None:
    """Stream into a temp file next to ``output``, then move it into place (never a partial file)."""
    try:
        fd, tmp = temp_beside(output)
    except OSError as exc:
        fail(exc)
    try:
        with os.fdopen(fd, "wb") as dst, run.open_artifact(key) as src, progress(key, size) as advance:
            copy_stream(ProgressReader(src, advance), dst)
        publish(tmp, output, force, links_optional=True)
    except OSError as exc:
        fail(exc)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _local_source(path: str) -> Iterator[tuple[Any, int | None]]:
    """The file to upload (stdin for ``-``) and its size if known; a file is closed afterwards."""
    if path == "-":
        yield typer.get_binary_stream("stdin"), None
        return
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"{path!r} is not a readable file")
    size = source_size(file)
    with file.open("rb") as source:
        yield source, size


@artifacts_app.command("put")
def artifacts_put(
    ctx: typer.Context,
    run_id: _RunIdArgument,
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
    with open_vault(ctx, uri, artifacts=artifacts) as vault:
        run = find_run(vault, run_id)
        with _local_source(path) as (source, size), progress(key, size) as advance:
            info = run.log_artifact(key, ProgressReader(source, advance))  # type: ignore[arg-type]
    err().print(Text(f"stored {key} for run {run.id} ({fmt_size(info.size)}, sha256 {info.digest[:12]})"))
