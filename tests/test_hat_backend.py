"""The Hat backend's own behaviour beyond the conformance suite: URI options, no I/O before first use,
an unreachable or misconfigured server, pickling, and threads sharing one backend (a real server)."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest
from hat_server import CONF, HatServer, hat_server, hat_uri  # noqa: F401 - pytest fixtures
from server_process import free_port

import labvault
from labvault.errors import BackendUnavailableError, InvalidArgumentError

pytest.importorskip("hat.event")


def test_uri_options_and_no_io_before_first_use(tmp_path: Path) -> None:
    from labvault.store.hat.backend import DEFAULT_PORT, HatBackend, default_artifacts_dir

    backend = HatBackend.from_uri(f"hat://127.0.0.1:{free_port()}?namespace=lab.1&model_prefix=a/b"
                                  "&timeout=0.5")
    assert (backend.namespace, backend.model_prefix) == ("lab.1", ("a", "b"))  # nothing listens: no I/O yet
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1"):
        backend.list_experiments()
    backend.close()
    backend.close()
    plain = HatBackend.from_uri("hat://example.invalid")
    assert (plain.port, plain.namespace, plain.model_prefix) == (DEFAULT_PORT, "default", None)
    assert default_artifacts_dir("example.invalid", DEFAULT_PORT).parts[-3:] == (
        "hat", f"example.invalid-{DEFAULT_PORT}", "blobs")
    for bad in ("hat://h?nope=1", "hat://h?namespace=a*b", "hat://h?model_prefix=a//b", "hat://h/path",
                "hat://h?timeout=0"):
        with pytest.raises(InvalidArgumentError):
            HatBackend.from_uri(bad)


def test_a_server_that_does_not_keep_labvault_events_is_named(tmp_path: Path) -> None:
    conf = CONF.replace("subscriptions: [['labvault', '*']]", "subscriptions: [['other', '*']]")
    server = HatServer(tmp_path, conf)
    server.start()
    try:
        uri = f"hat://{server.address}?artifacts=file://{tmp_path / 'b'}"
        with labvault.open(uri) as vault, pytest.raises(BackendUnavailableError, match="timeseries"):
            vault.experiments()
    finally:
        server.stop()


def test_a_pickled_backend_sees_the_same_vault(hat_uri: str) -> None:  # noqa: F811 - the fixture
    with labvault.open(hat_uri) as vault:
        with vault.experiment("e").start_run(params={"a": 1}) as run:
            run.log_metric("m", 2.0, step=7)
        copy = pickle.loads(pickle.dumps(vault.backend))
        try:
            assert copy.get_run(run.id).params == {"a": 1}
            assert copy.metric_history(run.id, "m").steps.tolist() == [7]
        finally:
            copy.close()


def test_threads_sharing_one_backend_get_dense_numbers(hat_uri: str) -> None:  # noqa: F811 - the fixture
    with labvault.open(hat_uri) as vault:
        exp = vault.experiment("threads")
        numbers: list[int] = []

        def work() -> None:
            for _ in range(5):
                with exp.start_run() as run:
                    numbers.append(run.number)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(numbers) == list(range(1, 21))
