"""Engine benchmarks: per-step orchestration overhead, and detection-to-rollback time.

1. Per-step overhead of a whole `rollout run` process on one local host (N no-op `true`
   steps, `rollback: none`, no checks), against the floor (a Python loop of
   subprocess.run(['true']) in one process; python start-up measured separately) and
   against ansible-core and pyinfra running the same no-op commands locally, side by side.
   Per-step cost = (wall(N) - wall(1)) / (N - 1), so each tool's fixed start-up cancels.
   The peers are installed on first use into bench/.peers-venv (git-ignored); if that
   fails, our numbers are still printed.

2. Detection to rollback: a private 3-gateway fleet, the demo-style plan with the
   v2-runtime-break release and no probe in the step's verify (guard every 250ms,
   fail_after 3). A side thread polls gw-1's /probe every 5 ms and records when it first
   answers 503; the result is the time from then to the first rollback.intent in the
   journal. Target: at most every x fail_after + 200 ms.

Usage: python bench/bench_engine.py [--runs 5] [--steps 100] [--peer-steps 20] [--detect-runs 5] [--no-peers]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from examples.exchange.fleet import start_fleet, stop_fleet  # noqa: E402

PYTHON = sys.executable
ROLLOUT = [PYTHON, "-m", "rollout"]
PEERS = HERE / ".peers-venv"
METADATA = REPO / "examples" / "exchange" / "metadata"


def wall(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Whole-process wall time in seconds; the command must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {proc.stdout[-800:]!r} {proc.stderr[-800:]!r}")
    return elapsed


def median_of(runs: int, fn: Callable[[], float]) -> float:
    """Median of `runs` calls after one warm-up."""
    fn()
    return statistics.median(fn() for _ in range(runs))


# --- 1. per-step overhead ---------------------------------------------------------------


def rollout_plan(path: Path, n: int) -> Path:
    steps = "".join(f"  - {{name: s{i}, run: 'true', rollback: none}}\n" for i in range(n))
    path.write_text(f"name: noop\nenvironments: {{local: {{rehearsal: true, hosts: {{h1: {{}}}}}}}}\nsteps:\n{steps}")
    return path


def time_rollout(work: Path, n: int) -> float:
    plan = rollout_plan(work / f"rollout-{n}.yaml", n)

    def once() -> float:
        state = Path(tempfile.mkdtemp(dir=work))
        try:
            return wall([*ROLLOUT, "run", str(plan), "--env", "local", "--state-dir", str(state)])
        finally:
            shutil.rmtree(state, ignore_errors=True)

    return once()


def time_floor(n: int) -> float:
    return wall([PYTHON, "-c", f"import subprocess\nfor _ in range({n}): subprocess.run(['true'])"])


def ensure_peers() -> str | None:
    """Install ansible-core and pyinfra into bench/.peers-venv; an error text if that failed."""
    if (PEERS / "bin" / "ansible-playbook").exists() and (PEERS / "bin" / "pyinfra").exists():
        return None
    try:
        subprocess.run([PYTHON, "-m", "venv", str(PEERS)], check=True, capture_output=True)
        (PEERS / ".gitignore").write_text("*\n")
        subprocess.run(
            [str(PEERS / "bin" / "pip"), "install", "-q", "ansible-core", "pyinfra"], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"could not install ansible-core and pyinfra into {PEERS}: {exc} {detail[-400:]!r}"
    return None


def time_ansible(work: Path, n: int) -> float:
    tasks = "".join(f"    - name: t{i}\n      command: 'true'\n" for i in range(n))
    play = work / f"ansible-{n}.yml"
    play.write_text(f"- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n{tasks}")
    env = {
        **os.environ,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    env["ANSIBLE_PYTHON_INTERPRETER"] = str(PEERS / "bin" / "python")
    return wall([str(PEERS / "bin" / "ansible-playbook"), "-i", "localhost,", str(play)], cwd=work, env=env)


def time_pyinfra(work: Path, n: int) -> float:
    deploy = work / f"pyinfra_{n}.py"
    deploy.write_text(
        "from pyinfra.operations import server\n"
        + "".join(f"server.shell(name='t{i}', commands=['true'])\n" for i in range(n))
    )
    return wall([str(PEERS / "bin" / "pyinfra"), "-y", "@local", str(deploy)], cwd=work)


def bench_steps(runs: int, steps: int, peer_steps: int, peers: bool) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        startup = median_of(runs, lambda: wall([PYTHON, "-c", "pass"]))
        rows: dict[str, dict[str, float]] = {}

        def measure(name: str, fn: Callable[[Path, int], float], n: int, reps: int) -> None:
            one = median_of(reps, lambda: fn(work, 1))
            many = median_of(reps, lambda: fn(work, n))
            rows[name] = {"n": n, "wall_1": one, "wall_n": many, "per_step_ms": (many - one) / (n - 1) * 1000}

        measure("floor: python loop of subprocess.run(['true'])", lambda _w, n: time_floor(n), steps, runs)
        measure("rollout run", time_rollout, steps, runs)
        peer_error = None
        if peers:
            peer_error = ensure_peers()
            if peer_error is None:
                measure("pyinfra @local", time_pyinfra, steps, max(3, runs // 2))
                measure("ansible-core connection: local", time_ansible, peer_steps, 3)
        return {"python_startup": startup, "rows": rows, "peer_error": peer_error}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- 2. detection to rollback ----------------------------------------------------------


def detection_plan(root: Path, fleet: list[object], path: Path) -> Path:
    release = METADATA / "v2-runtime-break.json"
    ctl = f"{PYTHON} {REPO / 'examples' / 'exchange' / 'ctl.py'}"
    hosts = {g.host: {"vars": {"port": g.port}, "groups": ["canary"] if i == 0 else []} for i, g in enumerate(fleet)}  # type: ignore[attr-defined]
    plan = {
        "name": "detect",
        "vars": {"live": f"{root}/{{{{ host }}}}/metadata.json", "gateway": "http://127.0.0.1:{{ port }}"},
        "environments": {"demo": {"rehearsal": True, "hosts": hosts}},
        "guards": [
            {
                "name": "order flow",
                "http": {"url": "{{ gateway }}/probe", "json": {"$.ok": True}},
                "every": "250ms",
                "timeout": "1s",
                "fail_after": 3,
            }
        ],
        "strategy": {"waves": ["canary", "100%"], "bake": "5s"},
        "steps": [
            {"name": "stage-release", "run": f"cp {release} {{{{ live }}}}.next", "rollback": "rm -f {{ live }}.next"},
            {
                "name": "activate-release",
                "run": f"cp {{{{ live }}}} {{{{ live }}}}.prev && mv {{{{ live }}}}.next {{{{ live }}}} && {ctl} reload --port {{{{ port }}}}",
                "verify": [
                    {
                        "name": "read-back",
                        "metadata": {"source": {"url": "{{ gateway }}/metadata"}, "equals": {"file": str(release)}},
                    }
                ],
                "rollback": f"mv {{{{ live }}}}.prev {{{{ live }}}} && {ctl} reload --port {{{{ port }}}}",
            },
        ],
    }
    path.write_text(json.dumps(plan, indent=2))
    return path


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def detect_once(work: Path) -> dict[str, float]:
    root = work / "fleet"
    fleet = start_fleet(root, 3, base_port=0, metadata=METADATA / "v1.json")
    try:
        plan = detection_plan(root, fleet, work / "detect.yaml")
        state = work / "state"
        red_at: list[float] = []
        stop = threading.Event()
        url = f"http://127.0.0.1:{fleet[0].port}/probe"

        def poll() -> None:
            while not stop.is_set():
                try:
                    urllib.request.urlopen(url, timeout=1).read()
                except urllib.error.HTTPError as exc:
                    if exc.code == 503:
                        red_at.append(time.time())
                        return
                except OSError:
                    pass
                time.sleep(0.005)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        proc = subprocess.run(
            [*ROLLOUT, "run", str(plan), "--env", "demo", "--state-dir", str(state)], capture_output=True, check=False
        )
        stop.set()
        poller.join(2)
        if proc.returncode != 1:
            raise RuntimeError(f"expected a rollback (exit 1), got {proc.returncode}: {proc.stdout[-800:]!r}")
        journal = next((state / "runs").iterdir()) / "journal.jsonl"
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        activated = next(e for e in events if e["kind"] == "step.result" and e["step"] == "activate-release")
        first_fail = next(e for e in events if e["kind"] == "guard.state" and e["outcome"] == "failing")
        tripped = next(e for e in events if e["kind"] == "guard.state" and e["outcome"] == "tripped")
        intent = next(e for e in events if e["kind"] == "rollback.intent")
        if not red_at:
            raise RuntimeError("the side poller never saw the probe go red")
        return {
            "probe_red_to_rollback_ms": (_ts(intent["ts"]) - red_at[0]) * 1000,
            "activate_result_to_rollback_ms": (_ts(intent["ts"]) - _ts(activated["ts"])) * 1000,
            "first_failing_to_trip_ms": (_ts(tripped["ts"]) - _ts(first_fail["ts"])) * 1000,
            "trip_to_rollback_ms": (_ts(intent["ts"]) - _ts(tripped["ts"])) * 1000,
        }
    finally:
        stop_fleet(root)


def bench_detection(runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
        try:
            samples.append(detect_once(work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]} | {
        "max_probe_red_to_rollback_ms": max(s["probe_red_to_rollback_ms"] for s in samples)
    }


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return f"{os.cpu_count()} CPUs, {model or platform.processor()}, Python {platform.python_version()}, {platform.system()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--peer-steps", type=int, default=20, help="steps for ansible-core (about 0.5 s each)")
    parser.add_argument("--detect-runs", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    print(f"machine: {machine()}", flush=True)
    steps = bench_steps(args.runs, args.steps, args.peer_steps, not args.no_peers)
    detect = bench_detection(args.detect_runs) if args.detect_runs else {}
    if args.json:
        print(json.dumps({"steps": steps, "detection": detect}, indent=2))
        return 0
    rows = steps["rows"]
    assert isinstance(rows, dict)
    print(f"\npython start-up (python -c pass): {steps['python_startup'] * 1000:.0f} ms")
    print(f"\n{'tool':<48} {'N':>4} {'wall(1)':>9} {'wall(N)':>9} {'ms/step':>8}")
    for name, row in rows.items():
        print(
            f"{name:<48} {row['n']:>4} {row['wall_1'] * 1000:>7.0f}ms {row['wall_n'] * 1000:>7.0f}ms {row['per_step_ms']:>8.2f}"
        )
    ours = rows["rollout run"]["per_step_ms"]
    floor = rows["floor: python loop of subprocess.run(['true'])"]["per_step_ms"]
    print(f"\nrollout over the floor: {ours - floor:+.2f} ms/step (target: within 3 ms)")
    for name, row in rows.items():
        if name not in ("rollout run",) and not name.startswith("floor"):
            print(f"{name}: {row['per_step_ms'] / ours:.1f}x rollout's per-step cost")
    if steps["peer_error"]:
        print(f"peers not measured: {steps['peer_error']}")
    if detect:
        print(f"\ndetection to rollback, median of {args.detect_runs} (target <= 250ms x 3 + 200ms = 950 ms):")
        for key, value in detect.items():
            print(f"  {key:<34} {value:8.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
