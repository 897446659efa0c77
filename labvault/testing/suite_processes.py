"""``ProcessTests``: reopening in a new process, racing writer processes, SIGKILL mid-logging (part of
``BackendTests``; the racing cases need the ``multiprocess`` capability, the others ``persistent``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import labvault
from labvault.testing.suite_base import SuiteBase, run_at_once, start_runs_worker

__all__ = ["ProcessTests"]


class ProcessTests(SuiteBase):
    """What several processes on one store see: everything written, dense numbers, a durable prefix."""

    # ----------------------------------------------------------------------------------------------
    # processes
    def test_reopen_in_new_process_sees_everything(self, uri: str, tmp_path: Path) -> None:
        vault = labvault.open(uri)
        if not self._capability(vault, "persistent"):
            vault.close()
            pytest.skip("backend is not persistent")
        with vault.experiment("persist").start_run(params={"a": 1}, tags={"t": "v"}) as run:
            run.log_metric("m", 1.5, step=3)
            run.log_result("r", [1, 2])
            run.log_artifact("d/f.txt", b"content")
        vault.close()
        script = (
            "import json, sys, labvault\n"
            "v = labvault.open(sys.argv[1]); r = v.get_run(sys.argv[2]); h = r.metric_history('m')\n"
            "print(json.dumps({'params': r.params, 'tags': r.tags, 'results': r.results,"
            " 'status': r.status, 'steps': h.steps.tolist(), 'values': h.values.tolist(),"
            " 'art': r.get_artifact('d/f.txt').decode(), 'exps': [e.name for e in v.experiments()]}))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, uri, run.id], capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got == {"params": {"a": 1}, "tags": {"t": "v"}, "results": {"r": [1, 2]},
                       "status": "finished", "steps": [3], "values": [1.5], "art": "content",
                       "exps": ["persist"]}

    @pytest.mark.multiprocess
    def test_run_numbers_dense_with_8_processes(self, uri: str, tmp_path: Path) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "multiprocess"):
                pytest.skip("backend is not shared between processes")
            vault.experiment("race")  # the experiment exists; creation races are tested separately
        barrier = tmp_path / "go"
        results = run_at_once(start_runs_worker, (uri, "race", 5, str(barrier)), 8, barrier)
        numbers = sorted(n for nums in results for n in nums)
        assert numbers == list(range(1, 41))
        with labvault.open(uri) as vault:
            assert sorted(r.number for r in vault.experiment("race").runs()) == list(range(1, 41))

    @pytest.mark.multiprocess
    def test_experiment_creation_race(self, uri: str, tmp_path: Path) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "multiprocess"):
                pytest.skip("backend is not shared between processes")
        barrier = tmp_path / "go"
        results = run_at_once(start_runs_worker, (uri, "fresh", 2, str(barrier)), 4, barrier)
        assert sorted(n for nums in results for n in nums) == list(range(1, 9))
        with labvault.open(uri) as vault:
            assert [e.name for e in vault.experiments()] == ["fresh"]

    @pytest.mark.multiprocess
    def test_sigkill_mid_logging_loses_at_most_the_unflushed_tail(self, uri: str) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "persistent"):
                pytest.skip("backend is not persistent")
        flush_interval = 0.2
        proc = subprocess.Popen(
            [sys.executable, "-m", "labvault.testing._workers", "kill_target",
             json.dumps([uri, "victims", flush_interval])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            run_id = json.loads(proc.stdout.readline())["run_id"]
            logged = 0
            while logged < 300:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else "worker died"
                logged = json.loads(line)["logged"]
            # Everything logged before this moment must be durable once 5 flush intervals have passed.
            time.sleep(5 * flush_interval)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        with labvault.open(uri, heartbeat_timeout=0.5) as vault:
            run = vault.get_run(run_id)
            hist = run.metric_history("x")
            n = len(hist)
            assert n > logged, f"only {n} points survived, but {logged} were logged well before the kill"
            np.testing.assert_array_equal(hist.steps, np.arange(n))  # a dense prefix: nothing torn
            np.testing.assert_array_equal(hist.values, np.arange(n, dtype=np.float64))
            time.sleep(0.6)
            assert run.refresh().status == "killed"  # the next reader notices the stopped heartbeat
