"""``labvault server``: serve a store over HTTP with uvicorn (checks its arguments, the auth store and the
store itself before it starts listening)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

import labvault
from labvault._uri import redact, resolve_uri
from labvault.cli.common import AuthDbOption, auth_store, err, exit_on_error, fail, fail_invalid

if TYPE_CHECKING:
    from labvault.server.app import ServerConfig

__all__ = ["server"]


def server(
    backend: Annotated[
        str | None,
        typer.Option("--backend", metavar="URI", show_default=False,
                     help="The store to serve, e.g. postgresql://user@db/labvault or sqlite:///runs.db. "
                          "Default: $LABVAULT_URI, else ./labvault-data, the store every other command "
                          "uses by default."),
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
    from labvault.server.app import ServerConfig  # lazy: loads fastapi (~230 ms): not at CLI start

    uri = backend or resolve_uri(None)[1]  # $LABVAULT_URI, else the embedded default, as labvault.open()
    _check_tls(certfile, keyfile)
    config = ServerConfig(max_request_size=int(max_request_mb * 1024 * 1024),
                          max_upload_size=int(max_upload_mb * 1024 * 1024) or None)
    with exit_on_error():
        store_path = _auth_store_path(auth_db, insecure, host)
        probe = labvault.open_backend(uri, artifacts=artifacts)  # fail fast on a wrong URI or a dead database
        try:
            probe.list_experiments()
        finally:
            probe.close()
    scheme = "https" if certfile else "http"
    err().print(Text(f"labvault server {labvault.__version__}: {scheme}://{host}:{port}/api/v1 serving "
                     f"{redact(uri)} ({workers} worker(s); auth: "
                     f"{'NONE' if insecure else f'tokens from {store_path}'})"))
    settings = _uvicorn_settings(host, port, log_level, certfile, keyfile)
    _serve(uri, artifacts, store_path, insecure, config, workers, settings)


def _check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Both TLS files or neither, and each a readable file."""
    if (certfile is None) != (keyfile is None):
        fail_invalid("TLS needs both --certfile and --keyfile")
    for tls_file in (certfile, keyfile):
        if tls_file is not None and not tls_file.is_file():
            fail_invalid(f"{str(tls_file)!r} is not a readable file")


def _auth_store_path(auth_db: Path | None, insecure: bool, host: str) -> Path | None:
    """The auth store to check tokens against (which must have users), None with ``--insecure``."""
    from labvault.server.app import is_loopback  # lazy: loads fastapi (~230 ms): not at CLI start

    if insecure:
        if not is_loopback(host):
            fail_invalid(f"--insecure serves without authentication, so only on 127.0.0.1, not {host!r}")
        err().print(Text("WARNING: --insecure: this server has NO AUTHENTICATION; every caller is an "
                         f"admin. It listens on {host} only.", style="bold red"))
        return None
    store = auth_store(auth_db)
    path: Path = store.path
    if not store.has_users():
        fail(name="AuthenticationError",
             message=f"the auth store {str(store.path)!r} has no users, and a server without users "
                     "would refuse everyone. Add one: labvault users add NAME --role admin; then "
                     "labvault tokens create NAME. (Or --insecure for a loopback-only trial.)")
    store.close()
    return path


def _uvicorn_settings(host: str, port: int, log_level: str, certfile: Path | None,
                      keyfile: Path | None) -> dict[str, Any]:
    """The uvicorn options every worker count shares (address, TLS, timeouts)."""
    ssl: dict[str, Any] = {}
    if certfile is not None and keyfile is not None:
        ssl = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    # Idle keep-alive connections live 75 s on the server, longer than the 5 s clients (httpx) keep them: the
    # client always drops an idle connection first, so a request never meets a connection the server is
    # closing (a lost race would fail a metric flush, which is not retried). With 5 s, the load test
    # (benchmarks/load.py, 50 clients on an overloaded machine) saw a few connections closed mid-request.
    return {"host": host, "port": port, "log_level": log_level, "timeout_keep_alive": 75,
            "timeout_graceful_shutdown": 5, "server_header": False, **ssl}


def _serve(uri: str, artifacts: str | None, store_path: Path | None, insecure: bool, config: ServerConfig,
           workers: int, settings: dict[str, Any]) -> None:
    """Run uvicorn: one process with the app built here, or ``workers`` processes that each build it from
    the environment."""
    import uvicorn  # lazy: optional driver (extra [server]), ~60 ms

    from labvault.server.app import config_to_env, create_app  # lazy: fastapi (~230 ms): not at CLI start

    if workers == 1:
        with exit_on_error():
            application = create_app(uri, artifacts=artifacts, auth=store_path, insecure=insecure,
                                     config=config)
        uvicorn.run(application, **settings)
        return
    os.environ.update({
        "LABVAULT_SERVER_BACKEND": uri, "LABVAULT_SERVER_ARTIFACTS": artifacts or "",
        "LABVAULT_SERVER_INSECURE": "1" if insecure else "0", "LABVAULT_SERVER_CONFIG": config_to_env(config),
    })
    if store_path is not None:
        os.environ["LABVAULT_AUTH_DB"] = str(store_path)
    uvicorn.run("labvault.server.app:create_app_from_env", factory=True, workers=workers, **settings)
