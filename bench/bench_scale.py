"""Fleet-scale benchmarks: one step on many local hosts with and without guards, and long plans.

1. Fleet: one `true` step on N local hosts (one wave, a bake so guards run long enough to
   measure) with no guard, with one http guard per host (every 1 s, against a keep-alive
   HTTP server in its own process, so its CPU is not ours) and with one command guard per
   host. Per run: wall, CPU seconds of the `rollout run` process and its children (and the
   average cores it used during the bake), peak RSS and peak thread count (sampled from
   /proc/PID), probes done (counted by the server, per host) against probes due (window /
   every), start-delay statistics and lag events from the journal when the guard code
   writes them (`guards.stop`, `guard.lagging`), failing guard states (all false: the
   server always answers 200) and journal bytes per host. Medians over --runs.
   Beside it, in the same run: ansible-core (forks = 50, N inventory hosts on
   `connection: local`, one `command: true` task). pyinfra is listed but not run: its
   `@local` connector allows a single host.

2. Detection to rollback with N guarded hosts: the canary's HTTP path starts answering
   503 the moment its step result is in the journal; the number is the time from the
   server's first 503 to the rollback's start in the journal.

3. Steps: 1, 100, 1,000 and 5,000 `true` steps on one host (per-step cost), `rollout
   validate` of the largest plan, and `timeline`, `report --format html` and `verify` on
   its journal (whole-process wall, medians).

Each number is printed beside its target from the fleet-scale issue, with PASS or MISS.
A configuration that exceeds --timeout is killed, reported as such, and not run again at
larger N (the guard collapse before the probe scheduler would otherwise take hours).

Usage: python bench/bench_scale.py [--sizes 10,100,500,1000] [--runs 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import PEERS, PYTHON, ROLLOUT, ensure_peers, machine  # noqa: E402

EVERY_S = 1.0
FAIL_AFTER = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("none", "http", "command")


# --- the probe target: a keep-alive HTTP server in its own process ---------------------------


class ProbeServer:
    """Counts GET /h/<host> per host and per wall-clock second; /_fail/<host> makes a host answer 503."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        self.failing: set[str] = set()
        self.flipped_at: dict[str, float] = {}
        self.first_503: dict[str, float] = {}

    def answer(self, path: str) -> tuple[int, bytes]:
        """Status and body for one request path."""
        if path.startswith("/h/"):
            return self._probe(path[3:])
        verb, _, host = path[1:].partition("/")
        if verb == "_fail":
            self.failing.add(host)
            self.flipped_at[host] = time.time()
        elif verb == "_heal":
            self.failing.discard(host)
        elif verb == "_reset":
            self.__init__()  # type: ignore[misc]
        elif verb == "_stats":
            body = {
                "counts": self.counts,
                "per_second": self.per_second,
                "flipped_at": self.flipped_at,
                "first_503": self.first_503,
            }
            return 200, json.dumps(body).encode()
        else:
            return 404, b"not found\n"
        return 200, b"done\n"

    def _probe(self, host: str) -> tuple[int, bytes]:
        now = time.time()
        self.counts[host] = self.counts.get(host, 0) + 1
        self.per_second[int(now)] = self.per_second.get(int(now), 0) + 1
        if host in self.failing:
            self.first_503.setdefault(host, now)
            return 503, b"failing\n"
        return 200, b"ok\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 with keep-alive: one request after another on the connection."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, body = self.answer(path)
                close = headers.get("connection", "").lower() == "close"
                reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, IndexError, ValueError):
            pass
        finally:
            writer.close()


async def _serve() -> None:
    server = ProbeServer()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()


class ServerProcess:
    """The probe server as a child process (`bench_scale.py serve`), with its control calls."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PYTHON, __file__, "serve"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def get(self, path: str) -> bytes:
        """One control request on its own connection."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return bytes(resp.read())

    def stats(self) -> dict[str, Any]:
        """Counts per host, per second, and the 503 flip times."""
        return dict(json.loads(self.get("/_stats")))

    def stop(self) -> None:
        """End the server process."""
        self.proc.terminate()
        self.proc.wait(10)


# --- plans ------------------------------------------------------------------------------------


def host_names(n: int) -> list[str]:
    """h0000, h0001, ... in plan order."""
    return [f"h{i:04d}" for i in range(n)]


def fleet_plan(path: Path, n: int, mode: str, port: int, bake: float, *, canary: bool = False) -> Path:
    """One `true` step on N local hosts, one wave (or canary then the rest), and a guard by mode."""
    hosts: dict[str, Any] = {
        h: ({"groups": ["canary"]} if canary and i == 0 else None) for i, h in enumerate(host_names(n))
    }
    plan: dict[str, Any] = {
        "name": f"scale-{mode}-{n}",
        "environments": {"local": {"rehearsal": True, "connection": "local", "hosts": hosts}},
        "strategy": {"waves": ["canary", "100%"] if canary else ["100%"], "bake": f"{bake:g}s"},
        "steps": [{"name": "touch", "run": "true", "rollback": "true"}],
    }
    guard = {"every": f"{EVERY_S:g}s", "fail_after": FAIL_AFTER, "timeout": "2s"}
    if mode == "http":
        plan["guards"] = [{"name": "health", "http": {"url": f"http://127.0.0.1:{port}/h/{{{{ host }}}}"}, **guard}]
    elif mode == "command":
        plan["guards"] = [{"name": "alive", "command": "true", **guard}]
    path.write_text(json.dumps(plan))
    return path


def steps_plan(path: Path, n: int) -> Path:
    """N `true` steps (irreversible, no checks) on one local host."""
    steps = [{"name": f"s{i}", "run": "true", "rollback": "none"} for i in range(n)]
    plan = {"name": f"steps-{n}", "environments": {"local": {"rehearsal": True, "hosts": {"h1": None}}}, "steps": steps}
    path.write_text(json.dumps(plan))
    return path


# --- running rollout under observation --------------------------------------------------------


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _proc_sample(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds of the process and all its children, VmHWM KB, threads) or None once gone.

    Children count whether reaped (cutime, cstime) or still running (their own utime and
    stime, read live): the guard prober is a child that lives as long as the bake. Its
    resident memory is added to the peak too; short-lived step processes' is not (it is
    theirs, not rollout's, and would make the peak depend on sampling luck).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    values = {k: v for k, _, v in (ln.partition(":") for ln in status.splitlines())}
    hwm = int(values.get("VmHWM", "0 kB").split()[0]) if "VmHWM" in values else 0
    threads = int(values.get("Threads", "0"))
    child_cpu, prober_rss = _live_children(pid)
    return cpu + child_cpu, hwm + prober_rss, threads


def _live_children(pid: int) -> tuple[float, int]:
    """(CPU seconds of `pid`'s running children, resident KB of its guard prober)."""
    cpu, rss = 0.0, 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return cpu, rss
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                stat = Path(f"/proc/{child}/stat").read_text()
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                status = Path(f"/proc/{child}/status").read_text() if b"rollout.engine.prober" in cmdline else ""
            except OSError:
                continue
            cpu += sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:13]) / CLK_TCK
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
    return cpu, rss


def _exited(pid: int) -> bool:
    """True once the child has exited; it stays a zombie (readable in /proc) until reaped."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    return info is not None


def observe(cmd: list[str], log: Path, timeout: float, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run `cmd`, sampling /proc every 100 ms; wall, exit code, CPU series, peak RSS and threads."""
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    samples: list[tuple[float, float]] = []
    peak_rss = peak_threads = 0
    timed_out = False
    while True:
        done = _exited(proc.pid)
        sample = _proc_sample(proc.pid)
        if sample is not None:
            cpu, hwm, threads = sample
            samples.append((time.time(), cpu))
            peak_rss = max(peak_rss, hwm)
            if not done:  # a zombie reports no threads
                peak_threads = max(peak_threads, threads)
        if done:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        if on_tick is not None:
            on_tick()
        time.sleep(0.1)
    code = proc.wait()
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "exit": code,
        "timed_out": timed_out,
        "cpu_s": samples[-1][1] if samples else 0.0,
        "cpu_series": samples,
        "peak_rss_mb": peak_rss / 1024,
        "peak_threads": peak_threads,
    }


def journal_events(state: Path) -> tuple[list[dict[str, Any]], int]:
    """The run's events and the journal's size in bytes."""
    runs = sorted((state / "runs").iterdir()) if (state / "runs").exists() else []
    if not runs:
        return [], 0
    journal = runs[-1] / "journal.jsonl"
    text = journal.read_text() if journal.exists() else ""
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events, len(text.encode())


def rollout_cmd(plan: Path, state: Path, locks: Path) -> list[str]:
    """`rollout run` of the plan with a private state and lock directory."""
    return [*ROLLOUT, "run", str(plan), "--env", "local", "--state-dir", str(state), "--lock-dir", str(locks)]


def _cores_between(series: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    inside = [(t, c) for t, c in series if t0 <= t <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def first(
    events: list[dict[str, Any]], kind: str, pred: Callable[[dict[str, Any]], bool] = lambda _e: True
) -> dict[str, Any] | None:
    """The first event of `kind` that satisfies `pred`."""
    return next((e for e in events if e.get("kind") == kind and pred(e)), None)


def fleet_metrics(
    run: dict[str, Any], events: list[dict[str, Any]], jbytes: int, n: int, stats: dict[str, Any] | None
) -> dict[str, Any]:
    """What one fleet run showed: the numbers the report prints."""
    m: dict[str, Any] = {k: run[k] for k in ("wall_s", "exit", "timed_out", "cpu_s", "peak_rss_mb", "peak_threads")}
    m["journal_bytes_per_host"] = jbytes / n
    bake_start, bake_end = first(events, "bake.start"), first(events, "bake.end")
    if bake_start and bake_end:
        t0, t1 = _ts(bake_start["ts"]), _ts(bake_end["ts"])
        m["bake_s"] = t1 - t0
        m["bake_cores"] = _cores_between(run["cpu_series"], t0, t1)
    m["failing_states"] = sum(
        1 for e in events if e.get("kind") == "guard.state" and e.get("outcome") in ("failing", "tripped")
    )
    m["lag_events"] = sum(1 for e in events if e.get("kind") == "guard.lagging")
    stop = first(events, "guards.stop")
    m["guards_stop"] = stop.get("data") if stop else None
    g_start, end = first(events, "guards.start"), first(events, "run.end")
    # A run killed at the timeout has no run.end: its guards probed until the last sample.
    end_ts = _ts(end["ts"]) if end else (run["cpu_series"][-1][0] if run["cpu_series"] else None)
    if stats is not None and g_start and end_ts is not None:
        window = end_ts - _ts(g_start["ts"])
        done = list(stats["counts"].values())
        m["probes_due_per_host"] = int(window / EVERY_S) + 1  # the first probe is due at the start
        m["probes_per_host"] = sum(done) / n
        m["probes_min_host"] = min(done) if len(done) == n else 0
        if bake_start and bake_end:
            lo, hi = int(_ts(bake_start["ts"])) + 1, int(_ts(bake_end["ts"]))  # whole seconds inside the bake
            secs = [int(s) for s in stats["per_second"]]
            if hi > lo:
                in_bake = sum(stats["per_second"].get(str(s), 0) for s in range(lo, hi) if s in secs)
                m["bake_probe_rate"] = in_bake / ((hi - lo) * n / EVERY_S)  # 1.0 = every probe on time
    return m


def fleet_once(work: Path, n: int, mode: str, server: ServerProcess, bake: float, timeout: float) -> dict[str, Any]:
    """One `rollout run` of the fleet plan, observed."""
    plan = fleet_plan(work / f"fleet-{mode}-{n}.yaml", n, mode, server.port, bake)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    try:
        if mode == "http":
            server.get("/_reset")
        run = observe(rollout_cmd(plan, state, work / "locks"), work / "run.log", timeout)
        events, jbytes = journal_events(state)
        stats = server.stats() if mode == "http" else None
        return fleet_metrics(run, events, jbytes, n, stats)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return statistics.median(values) if values else None


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "wall_s", "cpu_s", "bake_cores", "peak_rss_mb", "peak_threads", "journal_bytes_per_host",
        "probes_per_host", "probes_due_per_host", "probes_min_host", "bake_probe_rate",
    )  # fmt: skip
    out: dict[str, Any] = {k: _median(rows, k) for k in keys}
    out["runs"] = len(rows)
    out["timed_out"] = any(r["timed_out"] for r in rows)
    out["exits"] = sorted({r["exit"] for r in rows})
    out["failing_states_max"] = max(r["failing_states"] for r in rows)
    out["failing_states_total"] = sum(r["failing_states"] for r in rows)
    out["lag_events_max"] = max(r["lag_events"] for r in rows)
    stops = [r["guards_stop"] for r in rows if r.get("guards_stop")]
    if stops:
        out["guards_stop"] = {
            k: statistics.median(s[k] for s in stops if isinstance(s.get(k), (int, float)))
            for k in stops[0]
            if any(isinstance(s.get(k), (int, float)) for s in stops)
        }
        out["max_start_delay_ms_worst"] = max(s.get("max_start_delay_ms") or 0 for s in stops)
    return out


def bench_fleet(
    work: Path, sizes: list[int], runs: int, bake: float, timeout: float, server: ServerProcess, modes: list[str]
) -> dict[str, Any]:
    """Every mode at every size; a mode that times out is not run at larger sizes."""
    results: dict[str, Any] = {}
    for mode in modes:
        collapsed = False
        for n in sizes:
            key = f"{mode}/{n}"
            if collapsed:
                results[key] = {"skipped": f"a smaller size exceeded the {timeout:g} s timeout"}
                print(f"  {key:<14} skipped (a smaller size timed out)", flush=True)
                continue
            rows = []
            for _ in range(runs):
                rows.append(fleet_once(work, n, mode, server, bake, timeout))
                if rows[-1]["timed_out"]:
                    collapsed = True
                    break
            results[key] = _summarise(rows) | {"samples": rows}
            r = results[key]
            print(
                f"  {key:<14} wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, rss {r['peak_rss_mb']:.0f} MB, "
                f"threads {r['peak_threads']:.0f}{', TIMED OUT' if r['timed_out'] else ''}",
                flush=True,
            )
    return results


# --- peers ------------------------------------------------------------------------------------


def ansible_once(work: Path, n: int, timeout: float) -> float | None:
    """ansible-playbook with forks = 50 over N local inventory hosts, one `command: true`; None on timeout."""
    inventory = work / f"inventory-{n}.ini"
    inventory.write_text("[all]\n" + "".join(f"{h} ansible_connection=local\n" for h in host_names(n)))
    play = work / "ansible-scale.yml"
    play.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - name: t\n      command: 'true'\n")
    env = {
        **os.environ,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_PYTHON_INTERPRETER": str(PEERS / "bin" / "python"),
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(PEERS / "bin" / "ansible-playbook"), "-f", "50", "-i", str(inventory), str(play)],
            cwd=work, env=env, capture_output=True, check=False, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-playbook exited {proc.returncode}: {proc.stdout[-800:]!r}")
    return time.perf_counter() - start


def bench_peers(work: Path, sizes: list[int], runs: int, timeout: float) -> dict[str, Any]:
    """ansible-core at each size (median of `runs`); pyinfra noted as not applicable."""
    error = ensure_peers()
    out: dict[str, Any] = {
        "pyinfra": "not run: pyinfra's @local connector allows one host ('Cannot have more than one @local')"
    }
    if error:
        return out | {"error": error}
    for n in sizes:
        walls = []
        for _ in range(runs):
            w = ansible_once(work, n, timeout)
            if w is None:
                break
            walls.append(w)
        out[f"ansible/{n}"] = {
            "wall_s": statistics.median(walls) if walls else None,
            "runs": len(walls),
            "timed_out": len(walls) < runs,
        }
        shown = f"{out[f'ansible/{n}']['wall_s']:.1f} s" if walls else f"timed out (> {timeout:g} s)"
        print(f"  ansible/{n:<6} wall {shown}", flush=True)
    return out


# --- detection to rollback --------------------------------------------------------------------


def detect_once(work: Path, n: int, server: ServerProcess, timeout: float) -> dict[str, Any]:
    """Canary h0000 goes red once its step result is journaled; server's first 503 -> rollback start."""
    plan = fleet_plan(work / f"detect-{n}.yaml", n, "http", server.port, bake=10.0, canary=True)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    server.get("/_reset")
    phase = "before"

    def flip_when_applied() -> None:
        # Red once the canary's change is journaled; healthy again once the rollback has
        # started, so the rollback's own check that guards are green can pass.
        nonlocal phase
        if phase == "healed":
            return
        events, _ = journal_events(state)
        if phase == "before" and first(events, "step.result", lambda e: e.get("host") == "h0000"):
            server.get("/_fail/h0000")
            phase = "red"
        elif phase == "red" and (first(events, "rollback.start") or first(events, "rollback.intent")):
            server.get("/_heal/h0000")
            phase = "healed"

    try:
        run = observe(rollout_cmd(plan, state, work / "locks"), work / "detect.log", timeout, flip_when_applied)
        events, _ = journal_events(state)
        stats = server.stats()
        out: dict[str, Any] = {"wall_s": run["wall_s"], "exit": run["exit"], "timed_out": run["timed_out"]}
        red = stats["first_503"].get("h0000")
        start = first(events, "rollback.start") or first(events, "rollback.intent")
        failing = first(events, "guard.state", lambda e: e.get("host") == "h0000" and e.get("outcome") == "failing")
        tripped = first(events, "guard.state", lambda e: e.get("outcome") == "tripped")
        false_trips = sum(
            1
            for e in events
            if e.get("kind") == "guard.state"
            and e.get("outcome") in ("failing", "tripped")
            and e.get("host") != "h0000"
        )
        out["other_hosts_failing_states"] = false_trips
        if red is not None and start is not None:
            out["first_503_to_rollback_ms"] = (_ts(start["ts"]) - red) * 1000
        if failing and start:
            out["journal_failing_to_rollback_ms"] = (_ts(start["ts"]) - _ts(failing["ts"])) * 1000
        if tripped and start:
            out["trip_to_rollback_ms"] = (_ts(start["ts"]) - _ts(tripped["ts"])) * 1000
            out["tripped_host"] = tripped.get("host")
        return out
    finally:
        shutil.rmtree(state, ignore_errors=True)


def bench_detection(work: Path, n: int, runs: int, server: ServerProcess, timeout: float) -> dict[str, Any]:
    """Medians of `runs` detection runs (stops at the first timeout)."""
    rows = []
    for _ in range(runs):
        rows.append(detect_once(work, n, server, timeout))
        ms = rows[-1].get("first_503_to_rollback_ms")
        shown = "timed out" if rows[-1]["timed_out"] else f"exit {rows[-1]['exit']}"
        print(f"  first 503 -> rollback start: {_fmt(ms, '.0f', ' ms')} ({shown})", flush=True)
        if rows[-1]["timed_out"]:
            break
    keys = ("first_503_to_rollback_ms", "journal_failing_to_rollback_ms", "trip_to_rollback_ms", "wall_s")
    out: dict[str, Any] = {k: _median(rows, k) for k in keys}
    worst = [r["first_503_to_rollback_ms"] for r in rows if "first_503_to_rollback_ms" in r]
    out |= {
        "n": n,
        "runs": len(rows),
        "worst_first_503_to_rollback_ms": max(worst) if worst else None,
        "timed_out": any(r["timed_out"] for r in rows),
        "exits": sorted({r["exit"] for r in rows}),
        "other_hosts_failing_states": max(r["other_hosts_failing_states"] for r in rows),
        "tripped_hosts": sorted({str(r.get("tripped_host")) for r in rows}),
        "samples": rows,
    }
    return out


# --- many steps on one host -------------------------------------------------------------------


def _wall(cmd: list[str], out: Path | None = None) -> float:
    start = time.perf_counter()
    with (out or Path(os.devnull)).open("wb") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:5]} exited {proc.returncode}: {proc.stderr[-800:]!r}")
    return elapsed


def bench_steps(work: Path, counts: list[int], runs: int) -> dict[str, Any]:
    """Whole `rollout run` walls for each step count; then validate/timeline/report/verify on the largest."""
    walls: dict[int, float] = {}
    keep = work / "steps-state"
    for n in counts:
        plan = steps_plan(work / f"steps-{n}.yaml", n)
        samples = []
        for i in range(runs):
            state = keep if (n == counts[-1] and i == 0) else Path(tempfile.mkdtemp(prefix="state-", dir=work))
            samples.append(_wall(rollout_cmd(plan, state, work / "locks")))
            if state != keep:
                shutil.rmtree(state, ignore_errors=True)
        walls[n] = statistics.median(samples)
        print(f"  {n:>5} steps: {walls[n]:.2f} s", flush=True)
    base = counts[0]
    per_step = {n: (walls[n] - walls[base]) / (n - base) * 1000 for n in counts if n != base}
    big = counts[-1]
    plan = work / f"steps-{big}.yaml"
    tools = {
        "validate": [*ROLLOUT, "validate", str(plan)],
        "timeline": [*ROLLOUT, "timeline", "last", "--state-dir", str(keep)],
        "report --format html": [*ROLLOUT, "report", "last", "--format", "html", "--state-dir", str(keep)],
        "verify": [*ROLLOUT, "verify", "last", "--state-dir", str(keep)],
    }
    tool_walls = {}
    for name, cmd in tools.items():
        tool_walls[name] = statistics.median(_wall(cmd, work / "tool.out") for _ in range(runs))
        print(f"  {name} on {big} steps: {tool_walls[name]:.2f} s", flush=True)
    return {"walls_s": walls, "per_step_ms": per_step, "tools_s": tool_walls, "largest": big}


# --- the report -------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    """PASS, MISS, or n/a when the number could not be measured."""
    return "n/a " if ok is None else ("PASS" if ok else "MISS")


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_fleet(fleet: dict[str, Any], peers: dict[str, Any], sizes: list[int], timeout: float) -> None:
    """One line per mode and size; then the peers."""
    print(
        f"\n{'mode/hosts':<14} {'wall s':>7} {'cpu s':>6} {'bake cores':>10} {'RSS MB':>7} {'threads':>7} "
        f"{'probes/host':>11} {'due':>5} {'bake rate':>9} {'failing':>7} {'lag':>4} {'J B/host':>8}"
    )
    for mode in MODES:
        for n in sizes:
            r = fleet.get(f"{mode}/{n}")
            if r is None:
                continue
            if "skipped" in r:
                print(f"{mode + '/' + str(n):<14} skipped: {r['skipped']}")
                continue
            wall = f">{timeout:g}" if r["timed_out"] else _fmt(r["wall_s"], ".1f")
            print(
                f"{mode + '/' + str(n):<14} {wall:>7} {_fmt(r['cpu_s'], '.1f'):>6} {_fmt(r['bake_cores']):>10} "
                f"{_fmt(r['peak_rss_mb'], '.0f'):>7} {_fmt(r['peak_threads'], '.0f'):>7} "
                f"{_fmt(r['probes_per_host'], '.1f'):>11} {_fmt(r['probes_due_per_host'], '.1f'):>5} "
                f"{_fmt(r['bake_probe_rate']):>9} {r['failing_states_max']:>7} {r['lag_events_max']:>4} "
                f"{_fmt(r['journal_bytes_per_host'], '.0f'):>8}"
            )
            if r.get("guards_stop"):
                print(f"{'':<14} guards.stop (median): {json.dumps(r['guards_stop'])}")
    print(f"\npeers: {peers.get('error') or ''}")
    for n in sizes:
        a = peers.get(f"ansible/{n}")
        if a:
            print(
                f"  ansible-core forks=50 /{n:<5} {'timed out' if a['timed_out'] and a['wall_s'] is None else _fmt(a['wall_s'], '.1f', ' s')}"
            )
    print(f"  pyinfra: {peers['pyinfra']}")


def _fleet_targets(fleet: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    g1000 = fleet.get("http/1000", {})
    if g1000:
        if "skipped" in g1000 or g1000.get("timed_out"):
            rows.append(("1,000 http-guarded hosts complete", g1000.get("skipped", "timed out"), False))
        else:
            cores = g1000.get("bake_cores")
            rows.append(
                (
                    "1,000 http guards: < 0.5 core during the bake",
                    _fmt(cores, ".2f", " cores"),
                    None if cores is None else cores < 0.5,
                )
            )
            worst = g1000.get("max_start_delay_ms_worst")
            rows.append(
                (
                    "every probe starts within 100 ms of due",
                    _fmt(worst, ".0f", " ms worst") if worst is not None else "no guards.stop summary",
                    None if worst is None else worst <= 100,
                )
            )
            rows.append(
                ("no probe lag reported", f"{g1000['lag_events_max']} guard.lagging", g1000["lag_events_max"] == 0)
            )
            rows.append(
                (
                    "no false failing states at 1,000 hosts",
                    f"{g1000['failing_states_total']} failing/tripped",
                    g1000["failing_states_total"] == 0,
                )
            )
    guarded = [r for k, r in fleet.items() if not k.startswith("none/") and "failing_states_total" in r]
    if guarded:
        total = sum(r["failing_states_total"] for r in guarded)
        rows.append(
            ("no false failing states in any guarded run (incl. killed)", f"{total} failing/tripped", total == 0)
        )
    for mode in MODES:
        big, small = fleet.get(f"{mode}/1000", {}), fleet.get(f"{mode}/100", {})
        if big and small and "wall_s" in big and "wall_s" in small and not big.get("timed_out"):
            for key, label in (("wall_s", "wall"), ("cpu_s", "CPU"), ("peak_rss_mb", "peak RSS")):
                if big.get(key) and small.get(key):
                    ratio = big[key] / small[key]
                    rows.append((f"{mode}: 1,000-host {label} <= 11x the 100-host", f"{ratio:.1f}x", ratio <= 11))
        elif big and small:
            rows.append((f"{mode}: 1,000-host run <= 11x the 100-host", "1,000 hosts did not complete", False))
    return rows


def targets(
    fleet: dict[str, Any], peers: dict[str, Any], detect: dict[str, Any], steps: dict[str, Any]
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for every target of the issue this run could judge."""
    rows = _fleet_targets(fleet)
    ours, theirs = fleet.get("none/500", {}).get("wall_s"), (peers.get("ansible/500") or {}).get("wall_s")
    if ours and theirs:
        rows.append(
            (
                "500 hosts, no guards: >= 10x faster than ansible-core",
                f"{theirs / ours:.1f}x ({ours:.1f} s vs {theirs:.1f} s)",
                theirs / ours >= 10,
            )
        )
    if detect:
        bound = EVERY_S * FAIL_AFTER * 1000 + 300
        ms = detect.get("first_503_to_rollback_ms")
        label = f"detection with {detect['n']} hosts: first failing probe -> rollback <= {bound:.0f} ms"
        if ms is None and detect["timed_out"]:
            rows.append((label, f"timed out, exit {detect['exits']}", False))
        else:
            rows.append((label, _fmt(ms, ".0f", " ms"), None if ms is None else ms <= bound))
    if steps:
        per = steps["per_step_ms"]
        lo, hi = per.get(100), per.get(steps["largest"])
        if lo and hi and steps["largest"] > 100:
            rows.append(
                (
                    f"per-step cost flat (within 20%) from 100 to {steps['largest']}",
                    f"{lo:.2f} -> {hi:.2f} ms",
                    hi <= lo * 1.2,
                )
            )
        tools = steps["tools_s"]
        rows.append(
            (
                f"validate of a {steps['largest']}-step plan < 0.5 s",
                f"{tools['validate']:.2f} s",
                tools["validate"] < 0.5,
            )
        )
        for name in ("timeline", "report --format html", "verify"):
            rows.append(
                (f"{name} on the {steps['largest']}-step journal < 1 s", f"{tools[name]:.2f} s", tools[name] < 1.0)
            )
    return rows


def parse_args() -> argparse.Namespace:
    """The command line; --quick overrides the sizes for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500,1000", help="host counts for the fleet runs")
    parser.add_argument("--modes", default=",".join(MODES), help="guard modes for the fleet runs: none,http,command")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bake", type=float, default=5.0, help="bake seconds in the fleet runs")
    parser.add_argument("--timeout", type=float, default=60.0, help="kill a run after this many seconds")
    parser.add_argument("--peer-sizes", default="10,100,500", help="host counts for ansible-core")
    parser.add_argument("--peer-runs", type=int, default=1)
    parser.add_argument("--detect-hosts", type=int, default=1000)
    parser.add_argument("--detect-runs", type=int, default=3)
    parser.add_argument("--steps", default="1,100,1000,5000", help="step counts on one host")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=10, one run, small step counts, no peers")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        # Defaults for a smoke run; options given on the command line still win.
        parser.set_defaults(sizes="10", runs=1, bake=2.0, detect_hosts=10, detect_runs=1, steps="1,100", no_peers=True)
        args = parser.parse_args()
    return args


def main() -> int:
    """Run each part, print the tables and the targets."""
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve())
        return 0
    args = parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    steps_counts = [int(s) for s in args.steps.split(",") if s]

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    server = ServerProcess()
    try:
        print("fleet runs:", flush=True)
        fleet = bench_fleet(work, sizes, args.runs, args.bake, args.timeout, server, args.modes.split(","))
        peers: dict[str, Any] = {"pyinfra": "not run (--no-peers)"}
        if not args.no_peers:
            print("peers:", flush=True)
            peers = bench_peers(
                work, [int(s) for s in args.peer_sizes.split(",") if s], args.peer_runs, args.timeout * 3
            )
        detect: dict[str, Any] = {}
        if args.detect_runs:
            print(f"detection with {args.detect_hosts} hosts:", flush=True)
            detect = bench_detection(work, args.detect_hosts, args.detect_runs, server, args.timeout)
        steps: dict[str, Any] = {}
        if len(steps_counts) > 1:
            print("steps on one host:", flush=True)
            steps = bench_steps(work, steps_counts, args.runs)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_fleet(fleet, peers, sizes, args.timeout)
    if detect:
        shown = {k: v for k, v in detect.items() if k != "samples"}
        print(f"\ndetection to rollback: {json.dumps(shown)}")
    if steps:
        print("\nsteps: " + ", ".join(f"{n}: {w:.2f} s" for n, w in steps["walls_s"].items()))
        print("per-step ms (vs 1 step): " + ", ".join(f"{n}: {v:.2f}" for n, v in steps["per_step_ms"].items()))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n\ntargets:")
    for label, measured, ok in targets(fleet, peers, detect, steps):
        print(f"  {verdict(ok)}  {label:<66} {measured}")
    if args.json:
        args.json.write_text(
            json.dumps({"fleet": fleet, "peers": peers, "detection": detect, "steps": steps}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
