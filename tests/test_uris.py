"""URIs: credentials are refused in URLs that must not carry them, an unknown scheme is an error naming it
(never a directory of that name), bare paths still open the file store, and the documented submodules are
reachable after a plain ``import labvault``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import labvault
from labvault.cli import app
from labvault.errors import InvalidArgumentError

SECRET = "s3cr3tPartOfTheToken0123456789"


# -- credentials in URLs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    f"http://127.0.0.1:9/?token=lv_0123456789ab_{SECRET}",
    f"https://lab.example:8443/prefix?access_token={SECRET}",
    f"http://127.0.0.1:9/?API_KEY={SECRET}&timeout=3",
    f"http://127.0.0.1:9/#token={SECRET}",
    f"http://ana:{SECRET}@127.0.0.1:9/",
    f"http://lv_0123456789ab_{SECRET}@127.0.0.1:9/",
])
def test_server_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    for opener in (labvault.open, labvault.open_backend):
        with pytest.raises(InvalidArgumentError) as info:
            opener(url, token="lv_0123456789ab_" + "x" * 30)
        message = str(info.value)
        assert SECRET not in message, message
        assert "token=" in message and "LABVAULT_TOKEN" in message and "labvault login" in message
        assert "127.0.0.1:9" in message or "lab.example" in message  # it says which URL


@pytest.mark.parametrize("url", [
    f"s3://bucket/prefix?session_token={SECRET}",
    f"s3://bucket/prefix?aws_secret_access_key={SECRET}",
    f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix",
])
def test_s3_url_with_credentials_is_refused_by_the_same_check(url: str) -> None:
    for opener in (labvault.open_blob_store, labvault.open_backend):
        with pytest.raises(InvalidArgumentError, match="must not carry credentials") as info:
            opener(url)
        assert SECRET not in str(info.value) and "AWS" in str(info.value)
    labvault.open_blob_store("s3://bucket/prefix?region=eu-west-1")  # ordinary options still pass


def test_cli_refuses_a_server_url_with_a_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["experiments", "--uri", f"http://127.0.0.1:9/?token={SECRET}"],
                                env={"LABVAULT_CONFIG_DIR": str(tmp_path)})
    output = " ".join(result.output.split())  # unwrapped
    assert result.exit_code == 1 and "InvalidArgumentError" in output
    assert "must not carry credentials" in output and SECRET not in result.output.replace("\n", "")


# -- unknown schemes -----------------------------------------------------------------------------------------
UNKNOWN = ["git+file:///{tmp}/store", "git://host/repo", "hat+x://x", "file+memory://", "sqlite+git:///{tmp}/x.db",
           "nosuch://{tmp}/y"]


@pytest.mark.parametrize("template", UNKNOWN)
def test_unknown_scheme_is_an_error_naming_it(template: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = template.format(tmp=tmp_path)
    scheme = uri.split("://", 1)[0]
    for opener in (labvault.open, labvault.open_backend):
        with pytest.raises(InvalidArgumentError) as info:
            opener(uri)
        message = str(info.value)
        assert f"unknown backend scheme {scheme!r}" in message
        assert all(known in message for known in ("file", "memory", "sqlite", "http"))
    for open_store in (labvault.open_blob_store, lambda u: labvault.blobs.open(u, part_size="8MiB")):
        with pytest.raises(InvalidArgumentError) as info:
            open_store(uri)
        assert f"unknown blob store scheme {scheme!r}" in str(info.value)
        assert all(known in str(info.value) for known in ("file", "memory", "s3"))
    result = CliRunner().invoke(app, ["experiments", "--uri", uri])
    assert result.exit_code == 1 and f"unknown backend scheme {scheme!r}" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []  # nothing was created, least of all a directory called "git+file:"


def test_a_scheme_without_slashes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for opener in (labvault.open, labvault.open_blob_store):
        with pytest.raises(InvalidArgumentError, match=r"'hat:x'.*scheme://"):
            opener("hat:x")
    assert list(tmp_path.iterdir()) == []


def test_known_driver_suffix_still_resolves() -> None:
    from labvault.store import registry
    from labvault.store.sql.postgresql import PostgresBackend

    assert registry.backend_class("postgresql+psycopg") is PostgresBackend
    with pytest.raises(InvalidArgumentError, match=r"'postgresql' is known, but not postgresql\+psycopg2"):
        registry.backend_class("postgresql+psycopg2")


@pytest.mark.parametrize("form", ["./rel-dir", "plain-dir", "{tmp}/abs-dir", "file://{tmp}/url-dir"])
def test_bare_paths_keep_opening_the_file_store(form: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = form.format(tmp=tmp_path)
    with labvault.open(uri) as vault:
        vault.experiment("e")
        assert type(vault.backend).__name__ == "FileBackend"
    name = uri.rsplit("/", 1)[-1]
    assert [p.name for p in tmp_path.iterdir()] == [name] and any((tmp_path / name).iterdir())


# -- submodules as attributes --------------------------------------------------------------------------------
def test_documented_submodules_are_attributes_of_a_plain_import() -> None:
    script = textwrap.dedent("""
        import sys
        import labvault
        heavy = ("numpy", "sqlalchemy", "pandas", "labvault.blobs", "labvault.client")
        heavy = [m for m in heavy if m in sys.modules]
        assert not heavy, heavy
        store = labvault.blobs.open("memory://")
        assert type(store).__name__ == "MemoryBlobStore"
        assert labvault.errors.NotFoundError is labvault.NotFoundError
        for name in ("api", "backends", "domain", "gc", "query", "sync", "testing"):
            assert getattr(labvault, name).__name__ == "labvault." + name
        assert "blobs" in dir(labvault)
        try:
            labvault.nosuch
        except AttributeError as exc:
            assert "nosuch" in str(exc)
        else:
            raise AssertionError("labvault.nosuch exists")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
