"""``labvault blobs cp / ls``: bytes in any blob store (file, s3, memory) addressed by URL, copied to and
from local files, stdin and stdout, and listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from labvault.cli.common import err, exit_on_error, out
from labvault.cli.format import dumps, fmt_size, fmt_time
from labvault.cli.transfer import (
    ProgressReader,
    progress,
    refuse_existing,
    source_size,
    to_stdout,
    write_local,
)
from labvault.errors import InvalidArgumentError

__all__ = ["blobs_app"]

#: ``labvault blobs``.
blobs_app = typer.Typer(
    help=(
        "Copy and list bytes in any blob store (file, s3, memory) by URL. A location is URL#KEY, e.g. "
        "s3://bucket/prefix#data/train.csv or file:///srv/blobs#a/b.bin, or a local path (no '#'), "
        "or '-' for stdin/stdout."
    ),
    no_args_is_help=True,
)

#: Where ``blobs cp`` reads or writes: (store, key), a local path, or None for stdin / stdout.
_Location = tuple[Any, str] | Path | None


def _parse_location(text: str) -> _Location:
    """(store, key) for URL#KEY, a Path for a local path, None for '-' (stdin/stdout)."""
    import labvault.blobs  # lazy: the blob stores load numpy: not at CLI start

    if text == "-":
        return None
    split = labvault.blobs.split_location(text)
    if split is None:
        return Path(text)
    url, key = split
    store = labvault.blobs.open(url)
    store.info  # noqa: B018 - fail early on a store without the API
    from labvault.domain import validation as v  # lazy: labvault.domain loads numpy: not at CLI start

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
    with exit_on_error():
        source = _parse_location(src)
        target = _parse_location(dst)
        if source is None and target is None:
            raise InvalidArgumentError("SRC and DST cannot both be - ; name a file or a URL#KEY")
        label, size = _describe_source(src, source)
        _refuse_existing_target(dst, target, force)
        if isinstance(source, tuple) and isinstance(target, tuple) and _same_store(source[0], target[0]):
            copied = target[0].copy(source[1], target[1])
            err().print(Text(f"copied {label} ({fmt_size(copied)}) within the store"))
            return
        with _reader(source) as reader, progress(label, size) as advance:
            stream = ProgressReader(reader, advance)
            if target is None:
                to_stdout(stream)
                return
            written = _write(stream, target, force)
    err().print(Text(f"copied {label} -> {dst} ({fmt_size(written)})"))


def _describe_source(text: str, source: _Location) -> tuple[str, int | None]:
    """What the progress bar calls the source, and its size if known (None for stdin)."""
    if source is None:
        return "stdin", None
    if isinstance(source, Path):
        if not source.is_file():
            raise InvalidArgumentError(f"{text!r} is not a readable file")
        return source.name, source_size(source)
    store, key = source
    return key, store.info(key).size


def _refuse_existing_target(text: str, target: _Location, force: bool) -> None:
    """Exit if the destination exists and ``--force`` is not given."""
    if isinstance(target, Path) and target.exists() and not force:
        refuse_existing(target)
    if isinstance(target, tuple) and not force and target[0].exists(target[1]):
        refuse_existing(text, "ConflictError")


@contextmanager
def _reader(source: _Location) -> Iterator[Any]:
    """The source opened for reading (stdin for None), closed afterwards."""
    if source is None:
        yield typer.get_binary_stream("stdin")
        return
    opened = source.open("rb") if isinstance(source, Path) else source[0].open(source[1])
    try:
        yield opened
    finally:
        opened.close()


def _write(stream: Any, target: tuple[Any, str] | Path, force: bool) -> int:
    """Write ``stream`` to a local file or a store key (a conditional write without ``force``)."""
    if isinstance(target, Path):
        return write_local(stream, target, force)
    store, key = target
    written: int = store.put(key, stream, if_absent=not force)
    return written


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
    import labvault.blobs  # lazy: the blob stores load numpy: not at CLI start

    with exit_on_error():
        store = labvault.blobs.open(url)
        found = list(store.scan(prefix))
    if as_json:
        for b in found:
            typer.echo(dumps({"key": b.key, "size": b.size, "digest": b.digest, "modified": b.modified,
                              "etag": b.etag}))
        return
    total = sum(b.size for b in found)
    table = Table(title=f"{len(found)} blob(s), {fmt_size(total)}", title_justify="left")
    for column in ("key", "size", "modified", "digest"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for b in found:
        table.add_row(Text(b.key), fmt_size(b.size), fmt_time(b.modified), Text(b.digest[:16]))
    out().print(table)
