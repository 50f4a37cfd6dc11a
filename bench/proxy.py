"""thrifty's proxy against LiteLLM's, side by side, over the same fast canned upstream on loopback.

Three targets answer the same ``POST /v1/chat/completions`` (one request
body, non-streaming), each in its own process on 127.0.0.1:

- ``direct``: the upstream itself (``bench/fast_upstream.py``, raw asyncio);
- ``thrifty``: ``thrifty serve``, one worker, the ledger on (its default
  SQLite file, in a temporary data dir), an ``openai-compatible`` provider
  pointed at the upstream; model ``canned/gpt-4o-mini``;
- ``litellm``: LiteLLM's proxy (``litellm[proxy]`` in its own virtual
  environment, ``bench/.venv-litellm``, made on first run), one worker, a
  master key, the same model name routed to the same upstream, and no
  database: its database mode needs Prisma engine downloads and does not
  start offline, so its spend logs are off.

Measured, in one run:

1. added latency: sequential requests from this process over keep-alive
   connections, timed at the client, the targets alternating in short blocks
   (20 requests after a 50 ms pause, the order rotating; see
   :func:`sequential` for why not request by request); added = the target's
   percentile minus direct's;
2. throughput: ``wrk`` (one thread, N connections, a Lua script for the POST)
   against each target in turn, the order rotating each round; requests/s per
   worker is the median round (and LiteLLM's best round is the one compared);
3. memory: the resident set (VmRSS from /proc) of each server's process
   tree, after warm-up and again after the load.

The client, wrk and the upstream are pinned to the first CPU and the servers
to another (on two CPUs both servers share the second, measured one at a
time; with three or more each has its own), so a worker's figures are its
own. The servers' CPU time per request (from /proc) is shown too: it is less
sensitive than wall time to other work on a shared machine. Prints a table
and writes bench/results/proxy.json; ``--profile`` then samples thrifty under
load with py-spy and says where its time goes.

    .venv/bin/python bench/proxy.py [--requests 2000] [--warmup 200] [--duration 10] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_SPEC = "litellm[proxy]==1.108.7"
PATH = "/v1/chat/completions"
MODEL = "canned/gpt-4o-mini"
BODY = json.dumps({
    "model": MODEL,
    "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 20,
}).encode()
EXPECTED = b"Hello from the canned upstream."


# ---------------------------------------------------------------- processes


class Processes:
    """Starts subprocesses each in its own session; on exit stops each one's process group (TERM, then KILL)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, cpus: set[int] | None, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None, stdout: int | None = None) -> subprocess.Popen[bytes]:
        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        out = log.open("ab")
        proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else out, stderr=out, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=pin)
        out.close()
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop one process (and its group) gracefully, then by force."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the group left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            self.stop(proc, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{log.stem} exited ({proc.returncode}) during start-up; its log:\n{_tail(log)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{log.stem} did not answer GET {path} within {timeout:.0f}s; its log:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def process_tree(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its tree so far."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> dict[str, object]:
    """VmRSS of a process and of its whole tree, in MiB."""
    procs = []
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        kib = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        procs.append({"pid": p, "rss_mib": round(kib / 1024, 1), "cmd": cmd[:120]})
    return {"tree_rss_mib": round(sum(p["rss_mib"] for p in procs), 1), "processes": procs}


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    port: int
    headers: dict[str, str]
    note: str
    proc: subprocess.Popen[bytes] | None = None  # the server's process (for direct: the upstream's)
    times_ms: list[float] = field(default_factory=list)
    self_reported_ms: list[float] = field(default_factory=list)
    rounds: list[dict[str, float]] = field(default_factory=list)
    rss: dict[str, dict[str, object]] = field(default_factory=dict)
    cpu_ms_per_request: float = 0.0  # the server's CPU time per sequential request
    cpu_busy: list[float] = field(default_factory=list)  # the server's CPU seconds per wall second, per wrk round


def ensure_litellm(venv: Path) -> Path:
    """The ``litellm`` launcher in ``venv``, installing ``litellm[proxy]`` there first if it is missing."""
    launcher = venv / "bin" / "litellm"
    if launcher.exists():
        return launcher
    print(f"installing {LITELLM_SPEC} into {venv} (its own environment; a few minutes, once)", flush=True)
    python = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    LITELLM_SPEC], check=True)
    return launcher


def litellm_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def thrifty_argv() -> list[str]:
    script = Path(sys.executable).parent / "thrifty"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from thrifty.cli import main; main()"]


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("THRIFTY_", "LITELLM_", "DATABASE_URL", "OPENAI_", "ANTHROPIC_", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def check_answer(target: Target) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    conn.request("POST", PATH, BODY, target.headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200 or EXPECTED not in data:
        raise SystemExit(f"{target.name} answered {resp.status} without the canned reply: {data[:500]!r}")


# ---------------------------------------------------------------- measurements


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


_SELF_REPORTED = {"thrifty": "x-thrifty-overhead-ms", "litellm": "x-litellm-overhead-duration-ms"}


def sequential(targets: list[Target], requests: int, warmup: int, block: int = 20, pause: float = 0.05) -> None:
    """One request at a time, each timed at the client, in short blocks per target (the order rotating).

    A block is ``block`` requests to one target, after ``pause`` seconds in
    which nothing is sent. On two CPUs both proxies share one, and a request
    sent to one right after the other answered pays for the other's
    leftovers (its work after answering, caches it evicted): thrifty measured
    1.2-1.3 ms added p50 alone and 2.6-3.2 ms interleaved request by request
    with LiteLLM. Short blocks with a pause keep that out while machine noise
    still hits every target alike. ``block=1, pause=0``: request by request.
    """
    conns = {t.name: _connect(t.port) for t in targets}
    sent = dict.fromkeys((t.name for t in targets), 0)
    total = warmup + requests
    gc.collect()
    gc.disable()
    try:
        for r in range(-(-total // block)):
            k = r % len(targets)
            for t in targets[k:] + targets[:k]:
                if pause:
                    time.sleep(pause)
                conn = conns[t.name]
                for _ in range(min(block, total - sent[t.name])):
                    t0 = time.perf_counter()
                    conn.request("POST", PATH, BODY, t.headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    dt = (time.perf_counter() - t0) * 1000
                    if resp.status != 200 or EXPECTED not in data:
                        raise SystemExit(f"{t.name} answered {resp.status}: {data[:300]!r}")
                    sent[t.name] += 1
                    if sent[t.name] > warmup:
                        t.times_ms.append(dt)
                        header = _SELF_REPORTED.get(t.name)
                        value = resp.getheader(header) if header else None
                        if value:
                            with contextlib.suppress(ValueError):
                                t.self_reported_ms.append(float(value))
    finally:
        gc.enable()
        for conn in conns.values():
            conn.close()


_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(target: Target, folder: Path) -> Path:
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
    path = folder / f"wrk-{target.name}.lua"
    path.write_text(_LUA.format(body=BODY.decode(), headers=headers))
    return path


def wrk(target: Target, script: Path, connections: int, duration: float, cpus: set[int] | None) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{target.port}{PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK-RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed on {target.name} ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line.removeprefix("WRK-RESULT "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"requests": r["requests"], "seconds": r["duration_us"] / 1e6, "rps": r["requests"] / (r["duration_us"] / 1e6),
            "errors": errors, "non_2xx": r["status"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000}


def ledger_rows(db: Path) -> int | None:
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM llm_calls").fetchone()[0])


# ---------------------------------------------------------------- profile

# where a sample's time goes: the first rule that matches a frame, from the innermost frame out
_BUCKETS = (
    ("upstream HTTP client (httpx2, httpcore2, h11, anyio; thrifty's asyncio backend for them)",
     ("httpx2/", "httpcore2/", "anyio/", "h11/", "providers/_aio.py")),
    ("ledger: pricing inline (genai-prices)", ("genai_prices/", "ledger/pricing.py", "price_record")),
    ("ledger: recorder thread (SQLite inserts)", ("Recorder.", "sqlalchemy/", "sqlite3")),
    ("ledger: observer (building the row)", ("ledger/observer.py",)),
    ("codecs and JSON (decode, encode)", ("codecs/", "json/", "middleware/entry.py")),
    ("limits stage", ("middleware/limits.py", "middleware/_budgets.py")),
    ("metrics", ("server/_metrics.py", "prometheus_client")),
    ("thrifty, the rest (pipeline, engine, context, server)", ("thrifty/",)),
    ("uvicorn and httptools (the server side of HTTP)", ("uvicorn/", "httptools")),
)
_IDLE = ("Runner.run ", "Condition.wait ", "Event.wait ", "select ", "_worker ")


def profile(target: Target, script: Path, connections: int, duration: float, cpus: set[int] | None,
            folder: Path, py_spy: str) -> dict[str, object]:
    """py-spy samples the proxy under wrk load; the busy samples are grouped by where their time went."""
    out = folder / "py-spy.txt"
    spy = subprocess.Popen([py_spy, "record", "-p", str(target.proc.pid), "-d", f"{max(1, int(duration) - 2)}",  # type: ignore[union-attr]
                            "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    time.sleep(0.5)
    run = wrk(target, script, connections, duration, cpus)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-2000:]}")
    buckets: dict[str, int] = dict.fromkeys([name for name, _ in _BUCKETS] + ["event loop, other"], 0)
    leaves: dict[str, int] = {}
    busy = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or frames[-1].startswith(_IDLE):
            continue
        n = int(count)
        busy += n
        name = "event loop, other"
        for frame in reversed(frames):
            hit = next((b for b, patterns in _BUCKETS if any(p in frame for p in patterns)), None)
            if hit is not None:
                name = hit
                break
        buckets[name] += n
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + n
    shares = {k: v / busy for k, v in sorted(buckets.items(), key=lambda kv: -kv[1]) if v}
    top = {k: v / busy for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]}
    return {"requests": run["requests"], "rps_while_sampled": run["rps"], "busy_samples": busy, "shares": shares,
            "top_self": top}


# ---------------------------------------------------------------- main


def cpu_plan(pin: bool) -> tuple[set[int] | None, list[set[int] | None]]:
    """CPUs for the client side (this process, wrk, the upstream) and for each server; None: not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, [None, None]
    servers = cpus[1:] if len(cpus) > 2 else [cpus[1]]
    return {cpus[0]}, [{servers[0]}, {servers[-1]}]


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per target, measured")
    parser.add_argument("--warmup", type=int, default=200, help="sequential requests per target, not measured")
    parser.add_argument("--block", type=int, default=20,
                        help="sequential requests in a row to one target (1: interleave request by request)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds of quiet before each block")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target (order rotating)")
    parser.add_argument("--connections", type=int, default=16, help="wrk's concurrent connections")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false",
                        help="skip LiteLLM (a quick look at thrifty alone; no comparison)")
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, ledger)")
    parser.add_argument("--profile", action="store_true",
                        help="then sample thrifty with py-spy under wrk load and say where its time goes")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy program (pip install py-spy)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    if args.profile and shutil.which(args.py_spy) is None:
        raise SystemExit(f"--profile needs py-spy: {args.py_spy} is not found (pip install py-spy, or --py-spy PATH)")
    launcher = ensure_litellm(args.litellm_venv) if args.litellm else None
    load_before = os.getloadavg()

    client_cpus, (thrifty_cpus, litellm_cpus) = cpu_plan(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="thrifty-bench-proxy-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally clauses stop the servers
    try:
        with Processes() as procs:
            # the upstream
            up_log = tmp / "upstream.log"
            up = procs.start([sys.executable, str(BENCH / "fast_upstream.py"), "--port", "0"], cpus=client_cpus,
                             log=up_log, stdout=subprocess.PIPE, env=clean_env())
            ready = up.stdout.readline().decode()  # type: ignore[union-attr]
            if not ready.startswith("ready "):
                raise SystemExit(f"the upstream did not start:\n{_tail(up_log)}")
            up_port = int(ready.split()[1])
            upstream = f"http://127.0.0.1:{up_port}/v1"
            direct = Target("direct", up_port, {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
                            "the canned upstream itself (raw asyncio)")
            direct.proc = up
            targets = [direct]

            # thrifty
            data_dir = tmp / "thrifty-data"
            config = tmp / "thrifty.toml"
            config.write_text(f'data_dir = "{data_dir}"\n\n[providers.canned]\nkind = "openai-compatible"\n'
                              f'base_url = "{upstream}"\napi_key = "sk-bench"\n')
            port = free_port()
            log = tmp / "thrifty.log"
            th = Target("thrifty", port, {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
                        "thrifty serve, 1 worker, ledger on (SQLite)")
            th.proc = procs.start([*thrifty_argv(), "serve", "--host", "127.0.0.1", "--port", str(port), "--config",
                                   str(config), "--log-level", "warning"], cpus=thrifty_cpus, log=log, env=clean_env())
            targets.append(th)

            # LiteLLM
            ll = None
            if launcher is not None:
                master = "sk-" + secrets.token_urlsafe(32)
                ll_config = tmp / "litellm.yaml"  # YAML is a superset of JSON
                ll_config.write_text(json.dumps({
                    "model_list": [{"model_name": MODEL, "litellm_params": {
                        "model": "openai/gpt-4o-mini", "api_base": upstream, "api_key": "sk-bench"}}],
                    "general_settings": {"master_key": master},
                }, indent=2))
                port = free_port()
                log = tmp / "litellm.log"
                ll = Target("litellm", port, {"Content-Type": "application/json", "Authorization": f"Bearer {master}"},
                            "LiteLLM proxy, 1 worker, no database (spend logs off)")
                ll.proc = procs.start([str(launcher), "--config", str(ll_config), "--host", "127.0.0.1", "--port",
                                       str(port), "--num_workers", "1"], cpus=litellm_cpus, log=log, cwd=tmp,
                                      env=clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR"))
                targets.append(ll)

            wait_ready(th.port, "/healthz", th.proc, tmp / "thrifty.log", 60)
            if ll is not None:
                wait_ready(ll.port, "/health/liveliness", ll.proc, tmp / "litellm.log", 180)  # type: ignore[arg-type]
            for t in targets:
                check_answer(t)
            print(f"targets up: {', '.join(f'{t.name} :{t.port}' for t in targets)}; "
                  f"CPUs: client/wrk/upstream {sorted(client_cpus) if client_cpus else 'any'}, "
                  f"servers {sorted(thrifty_cpus) if thrifty_cpus else 'any'}", flush=True)

            # 1. sequential latency
            print(f"sequential: {args.warmup} + {args.requests} requests per target, in blocks of {args.block} ...",
                  flush=True)
            cpu0 = {t.name: cpu_seconds(t.proc.pid) for t in targets}  # type: ignore[union-attr]
            sequential(targets, args.requests, args.warmup, args.block, args.pause)
            for t in targets:
                used = cpu_seconds(t.proc.pid) - cpu0[t.name]  # type: ignore[union-attr]
                served_each = len(targets) if t is direct else 1  # the upstream also answers the proxies
                t.cpu_ms_per_request = used * 1000 / ((args.requests + args.warmup) * served_each)

            # 2. throughput (a short warm-up run each, then the rounds)
            scripts = {t.name: wrk_script(t, tmp) for t in targets}
            warm = {t.name: wrk(t, scripts[t.name], args.connections, 2, client_cpus) for t in targets}
            for t in targets[1:]:
                t.rss["after_warmup"] = rss_mib(t.proc.pid)  # type: ignore[union-attr]
            print(f"throughput: wrk -t1 -c{args.connections}, {args.rounds} x {args.duration:g}s per target ...",
                  flush=True)
            for r in range(args.rounds):
                k = r % len(targets)
                for t in targets[k:] + targets[:k]:
                    time.sleep(1)  # the previous target's last requests drain
                    cpu0 = cpu_seconds(t.proc.pid)  # type: ignore[union-attr]
                    t.rounds.append(wrk(t, scripts[t.name], args.connections, args.duration, client_cpus))
                    t.cpu_busy.append((cpu_seconds(t.proc.pid) - cpu0) / t.rounds[-1]["seconds"])  # type: ignore[union-attr]
            for t in targets[1:]:
                t.rss["after_load"] = rss_mib(t.proc.pid)  # type: ignore[union-attr]
            prof = None
            if args.profile:
                print("profile: py-spy on thrifty under wrk load ...", flush=True)
                prof = profile(th, scripts["thrifty"], args.connections, max(args.duration, 10), client_cpus, tmp,
                               shutil.which(args.py_spy))  # type: ignore[arg-type]

            # the ledger: stop thrifty (it flushes on shutdown), then count its rows
            procs.stop(th.proc, sig=signal.SIGINT, timeout=60)  # type: ignore[arg-type]
            rows = ledger_rows(data_dir / "ledger.db")
            served = int(1 + args.warmup + args.requests + warm["thrifty"]["requests"]
                         + sum(r["requests"] for r in th.rounds) + (prof["requests"] if prof else 0))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")

    report(args, targets, rows, served, client_cpus, thrifty_cpus,
           litellm_version(args.litellm_venv) if launcher else None, prof, (load_before, os.getloadavg()))


def report(args: argparse.Namespace, targets: list[Target], rows: int | None, served: int,  # noqa: PLR0913
           client_cpus: set[int] | None, server_cpus: set[int] | None, ll_version: str | None,
           prof: dict[str, object] | None, load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    from importlib.metadata import version

    direct = targets[0]
    d50, d99 = pct(direct.times_ms, .5), pct(direct.times_ms, .99)
    out_rows = []
    for t in targets:
        p50, p99 = pct(t.times_ms, .5), pct(t.times_ms, .99)
        rps = [r["rps"] for r in t.rounds]
        row: dict[str, object] = {
            "target": t.name, "setup": t.note, "requests": len(t.times_ms),
            "p50_ms": p50, "p99_ms": p99, "mean_ms": statistics.fmean(t.times_ms),
            "added_p50_ms": p50 - d50 if t is not direct else 0.0, "added_p99_ms": p99 - d99 if t is not direct else 0.0,
            "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "wrk_rounds": t.rounds, "wrk_errors": sum(r["errors"] for r in t.rounds),
            "cpu_ms_per_sequential_request": t.cpu_ms_per_request,
            "cpu_busy_under_load": statistics.median(t.cpu_busy),
        }
        if t.self_reported_ms:
            row["self_reported_overhead_p50_ms"] = statistics.median(t.self_reported_ms)
        if t.rss:
            row["rss_mib_after_warmup"] = t.rss["after_warmup"]["tree_rss_mib"]
            row["rss_mib_after_load"] = t.rss["after_load"]["tree_rss_mib"]
            row["processes"] = t.rss["after_load"]["processes"]
        out_rows.append(row)
    by = {r["target"]: r for r in out_rows}

    checks: list[dict[str, object]] = []
    th, ll = by["thrifty"], by.get("litellm")
    checks.append({"target": "thrifty added p50 < 2 ms (ledger on)", "value": th["added_p50_ms"],
                   "met": th["added_p50_ms"] < 2.0})  # type: ignore[operator]
    if ll is not None:
        checks += [
            {"target": "thrifty added p50 <= 1/3 of LiteLLM's",
             "value": th["added_p50_ms"] / ll["added_p50_ms"],  # type: ignore[operator]
             "met": th["added_p50_ms"] <= ll["added_p50_ms"] / 3},  # type: ignore[operator]
            {"target": "thrifty req/s per worker >= 3x LiteLLM's best round",
             "value": th["rps_median"] / ll["rps_max"],  # type: ignore[operator]
             "met": th["rps_median"] >= 3 * ll["rps_max"]},  # type: ignore[operator]
            {"target": "thrifty RSS per worker < 1/2 of LiteLLM's",
             "value": th["rss_mib_after_load"] / ll["rss_mib_after_load"],  # type: ignore[operator]
             "met": th["rss_mib_after_load"] < ll["rss_mib_after_load"] / 2},  # type: ignore[operator]
        ]

    print()
    print(f"proxy overhead, one worker each, fast canned upstream on loopback; sequential: {args.requests} requests "
          f"per target (blocks of {args.block}, rotating); throughput: wrk -t1 -c{args.connections}, median of "
          f"{args.rounds} x {args.duration:g}s")
    head = (f"{'target':8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'CPU ms/req':>11} "
            f"{'req/s (range)':>20} {'CPU busy':>9} {'RSS MiB':>8}  setup")
    print(head)
    print("-" * (len(head) + 40))
    for r in out_rows:
        rss = f"{r['rss_mib_after_load']:8.0f}" if "rss_mib_after_load" in r else f"{'-':>8}"
        rps = f"{r['rps_median']:.0f} ({r['rps_min']:.0f}-{r['rps_max']:.0f})"
        print(f"{r['target']:8} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['added_p50_ms']:10.3f} "
              f"{r['added_p99_ms']:10.3f} {r['cpu_ms_per_sequential_request']:11.3f} {rps:>20} "
              f"{r['cpu_busy_under_load']:9.0%} {rss}  {r['setup']}")
    print()
    for c in checks:
        print(f"  {'met ' if c['met'] else 'MISS'}  {c['target']:52} {c['value']:.3f}")
    errors = {r["target"]: r["wrk_errors"] for r in out_rows if r["wrk_errors"]}
    print(f"  wrk errors (socket or non-2xx): {errors or 'none'}")
    for r in out_rows:
        if "self_reported_overhead_p50_ms" in r:
            print(f"  {r['target']}'s own overhead header, p50: {r['self_reported_overhead_p50_ms']:.3f} ms "
                  f"(measured at the client: {r['added_p50_ms']:.3f} ms)")
    print(f"  thrifty ledger rows written: {rows} for {served} requests counted by the client and wrk")
    print(f"  load average (1 min) before and after: {load[0][0]:.2f}, {load[1][0]:.2f} "
          f"(other work on the machine slows every target)")
    if prof is not None:
        print(f"\nwhere thrifty's busy time goes under wrk load (py-spy, {prof['busy_samples']} busy samples, "
              f"{prof['rps_while_sampled']:.0f} req/s while sampled):")
        for name, share in prof["shares"].items():  # type: ignore[attr-defined]
            print(f"  {share:6.1%}  {name}")
        print("  innermost functions:")
        for name, share in list(prof["top_self"].items())[:10]:  # type: ignore[attr-defined]
            print(f"  {share:6.1%}  {name}")

    RESULTS.mkdir(exist_ok=True)
    out = {
        "bench": "proxy", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "pinning": {"client_wrk_upstream": sorted(client_cpus) if client_cpus else None,
                    "servers": sorted(server_cpus) if server_cpus else None},
        "command": "bench/proxy.py " + " ".join(sys.argv[1:]),
        "thrifty": version("thrifty"), "litellm": ll_version,
        "litellm_database": "none (its database mode needs Prisma engine downloads; offline it does not start)",
        "upstream": "bench/fast_upstream.py (raw asyncio, one fixed non-streaming completion)",
        "load_generator": "wrk -t1 (Lua script for the POST body)",
        "requests": args.requests, "warmup": args.warmup, "block": args.block, "pause_s": args.pause,
        "duration_s": args.duration, "rounds": args.rounds,
        "connections": args.connections, "ledger": "sqlite", "ledger_rows": rows, "requests_served_thrifty": served,
        "load_average_1min": {"before": load[0][0], "after": load[1][0]},
        "rows": out_rows, "targets": checks, "profile": prof,
    }
    (RESULTS / "proxy.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
