"""A fleet of 100 SSH host aliases on one sshd, 5 steps each: rollout vs the raw floor vs the peers.

One throwaway sshd (started as the test fixture starts it: fresh keys, MaxStartups 200, the
login shell's rc files empty) and an OpenSSH client config with one `Host` block per alias
(h001..h100, all HostName 127.0.0.1 and the server's port, user, key and known_hosts). Every
tool reaches the hosts by their aliases through that file, checks the host key against that
known_hosts, and runs the same 5 commands on every host, all hosts at once:
`echo stepN >> DIR/<alias>`, so the work is real and checked afterwards (every host's
file must hold its 5 lines, in order, or the run counts as failed).

Contenders, each a whole process timed from its start (interpreter start-up included):

- rollout: `rollout run plan.yaml` (ssh hosts named by alias, `ssh: {config: FILE}`, one
  wave, concurrency = hosts, no guards, no bake), as the user runs it;
- floor: a Python process with a thread pool of one paramiko connection per host (our own
  socket with TCP_NODELAY, the same key and known_hosts), 5 `exec_command` each;
- ansible-core: `ansible-playbook`, forks = hosts, an inventory of the aliases, ssh args
  `-F FILE` with ControlMaster (cold: a fresh ControlPath directory per run), pipelining on,
  `gather_facts: false` and 5 `raw` tasks (the cheapest task ansible has: no module is
  shipped to the host, which is the fairest comparison with a shell command);
- pyinfra: an inventory of the aliases with `ssh_config_file`, `ssh_known_hosts_file` and
  strict host key checking, 5 `server.shell` operations, `--parallel` = hosts.

The peers come from bench/.peers-venv (`make bench-peers`); a peer that is missing or
fails is reported as such, and the others are still measured.

Usage: python bench/bench_ssh_fleet.py [--hosts 100] [--runs 5] [--steps 5] [--no-peers] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.conftest_sshd import SshdServer, start_sshd, stop_sshd  # noqa: E402

PYTHON = sys.executable
PEERS = HERE / ".peers-venv"
RUN_TIMEOUT = 600.0  # one contender's run; ansible-core at 100 forks on 2 cores takes tens of seconds

FLOOR = """\
import socket, sys
from concurrent.futures import ThreadPoolExecutor
import paramiko

host, port, user, key, known_hosts, out, steps = sys.argv[1:8]
aliases = sys.argv[8:]

def one(alias):
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.SSHClient()
    client.load_system_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, port=int(port), username=user, key_filename=key, look_for_keys=False,
                   allow_agent=False, sock=sock, timeout=30, banner_timeout=30, auth_timeout=30)
    try:
        for n in range(1, int(steps) + 1):
            _, stdout, stderr = client.exec_command(f"echo step{n} >> {out}/{alias}")
            stdout.read(); stderr.read()
            if stdout.channel.recv_exit_status() != 0:
                raise SystemExit(f"{alias}: step{n} failed")
    finally:
        client.close()

with ThreadPoolExecutor(len(aliases)) as pool:
    list(pool.map(one, aliases))
"""


@dataclass
class Contender:
    """One tool: how to run it once, and what each run measured."""

    name: str
    note: str
    walls: list[float] = field(default_factory=list)
    error: str | None = None

    def row(self, floor: float | None) -> dict[str, object]:
        """Median, min, max (seconds) and the ratio to the floor's median, or why there is none."""
        if self.error is not None or not self.walls:
            return {"name": self.name, "note": self.note, "error": self.error or "not run"}
        median = statistics.median(self.walls)
        return {
            "name": self.name,
            "note": self.note,
            "runs": len(self.walls),
            "median_s": round(median, 3),
            "min_s": round(min(self.walls), 3),
            "max_s": round(max(self.walls), 3),
            "vs_floor": round(median / floor, 2) if floor else None,
        }


class Fleet:
    """The sshd, the client config with one Host block per alias, and the per-run output directory."""

    def __init__(self, work: Path, server: SshdServer, hosts: int, steps: int) -> None:
        self.work = work
        self.server = server
        self.steps = steps
        self.aliases = [f"h{i:03d}" for i in range(1, hosts + 1)]
        self.out = work / "out"
        self.config = work / "ssh_config"
        self.config.write_text("".join(self._host_block(a) for a in self.aliases))

    def _host_block(self, alias: str) -> str:
        s = self.server
        return (
            f"Host {alias}\n"
            f"    HostName {s.host}\n"
            f"    Port {s.port}\n"
            f"    User {s.user}\n"
            f"    IdentityFile {s.identity_file}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {s.known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    ConnectTimeout 30\n"
        )

    def fresh_output(self) -> None:
        """An empty output directory for the next run."""
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()

    def check_output(self) -> None:
        """Every host's file holds its steps in order: the run did all the work."""
        want = "".join(f"step{n}\n" for n in range(1, self.steps + 1))
        wrong = [a for a in self.aliases if _read(self.out / a) != want]
        if wrong:
            raise RuntimeError(f"{len(wrong)} host(s) without their {self.steps} steps, e.g. {wrong[0]}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _timed(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> float:
    """Whole-process wall seconds; raise with the output's tail if the command fails."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{Path(cmd[0]).name} did not finish within {RUN_TIMEOUT:g}s") from exc
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stdout[-600:] + proc.stderr[-600:]).decode(errors="replace")
        raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {tail}")
    return elapsed


# --- the contenders ------------------------------------------------------------------


def rollout_cmd(fleet: Fleet) -> list[str]:
    """`rollout run` on a plan of the aliases, one wave, concurrency = hosts, no guards, no bake."""
    plan = fleet.work / "plan.yaml"
    hosts = "".join(f"      {a}: {{}}\n" for a in fleet.aliases)
    steps = "".join(
        f"  - {{name: step{n}, run: 'echo step{n} >> {fleet.out}/{{{{ host }}}}', rollback: none}}\n"
        for n in range(1, fleet.steps + 1)
    )
    plan.write_text(
        "name: fleet\n"
        "environments:\n"
        "  lab:\n"
        "    rehearsal: true\n"
        "    connection: ssh\n"
        f"    ssh: {{config: {fleet.config}}}\n"
        "    hosts:\n"
        f"{hosts}"
        f"strategy: {{waves: ['100%'], concurrency: {len(fleet.aliases)}, bake: 0s}}\n"
        f"steps:\n{steps}"
    )
    return [PYTHON, "-m", "rollout", "run", str(plan), "--env", "lab", "--state-dir", str(fleet.work / "state")]


def floor_cmd(fleet: Fleet) -> list[str]:
    """The raw floor: a Python process with a thread pool of paramiko connections (TCP_NODELAY)."""
    script = fleet.work / "floor.py"
    script.write_text(FLOOR)
    s = fleet.server
    return [
        PYTHON,
        str(script),
        s.host,
        str(s.port),
        s.user,
        s.identity_file,
        s.known_hosts,
        str(fleet.out),
        str(fleet.steps),
        *fleet.aliases,
    ]


def ansible_cmd(fleet: Fleet, control_dir: Path) -> tuple[list[str], dict[str, str]]:
    """ansible-playbook, forks = hosts, `raw` tasks, pipelining, ControlMaster in a fresh directory."""
    inventory = fleet.work / "inventory.ini"
    inventory.write_text("[fleet]\n" + "".join(f"{a}\n" for a in fleet.aliases))
    tasks = "".join(
        f"    - name: step{n}\n      raw: echo step{n} >> {fleet.out}/{{{{ inventory_hostname }}}}\n"
        for n in range(1, fleet.steps + 1)
    )
    play = fleet.work / "play.yml"
    play.write_text(f"- hosts: fleet\n  gather_facts: false\n  tasks:\n{tasks}")
    ssh_args = f"-F {fleet.config} -o ControlMaster=auto -o ControlPersist=2s -o ControlPath={control_dir}/%C"
    env = {
        **os.environ,
        "ANSIBLE_FORKS": str(len(fleet.aliases)),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(fleet.work / "ansible-tmp"),
        "ANSIBLE_HOME": str(fleet.work / "ansible-home"),
    }
    return [str(PEERS / "bin" / "ansible-playbook"), "-i", str(inventory), str(play)], env


def pyinfra_cmd(fleet: Fleet) -> list[str]:
    """pyinfra with the aliases read through ssh_config_file, strict host keys, --parallel = hosts."""
    inventory = fleet.work / "inventory.py"
    data = {
        "ssh_config_file": str(fleet.config),
        "ssh_known_hosts_file": fleet.server.known_hosts,
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }
    inventory.write_text(f"fleet = ({fleet.aliases!r}, {data!r})\n")
    deploy = fleet.work / "deploy.py"
    deploy.write_text(
        "from pyinfra import host\nfrom pyinfra.operations import server\n"
        + "".join(
            f"server.shell(name='step{n}', commands=[f'echo step{n} >> {fleet.out}/{{host.name}}'])\n"
            for n in range(1, fleet.steps + 1)
        )
    )
    return [str(PEERS / "bin" / "pyinfra"), "-y", "--parallel", str(len(fleet.aliases)), str(inventory), str(deploy)]


def _wait_control_masters(control_dir: Path, deadline: float) -> None:
    """Let ansible's ControlPersist masters exit, so no run inherits another's connections."""
    while any(control_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)


def run_once(fleet: Fleet, contender: Contender, run: int) -> float:
    """One timed run of one contender, its output checked."""
    fleet.fresh_output()
    if contender.name == "rollout":
        shutil.rmtree(fleet.work / "state", ignore_errors=True)
        elapsed = _timed(rollout_cmd(fleet), cwd=fleet.work)
    elif contender.name == "floor":
        elapsed = _timed(floor_cmd(fleet), cwd=fleet.work)
    elif contender.name == "ansible-core":
        control_dir = Path(tempfile.mkdtemp(prefix=f"cm{run}-", dir="/tmp"))  # short: unix socket paths
        try:
            cmd, env = ansible_cmd(fleet, control_dir)
            elapsed = _timed(cmd, cwd=fleet.work, env=env)
        finally:
            _wait_control_masters(control_dir, time.monotonic() + 15)
            shutil.rmtree(control_dir, ignore_errors=True)
    else:
        elapsed = _timed(pyinfra_cmd(fleet), cwd=fleet.work)
    fleet.check_output()
    return elapsed


def contenders(peers: bool) -> list[Contender]:
    """The tools to measure; a peer without its executable is marked with why."""
    found = [
        Contender("floor", "thread pool of paramiko connections, TCP_NODELAY, one process"),
        Contender("rollout", "rollout run, one wave, concurrency = hosts"),
    ]
    if not peers:
        return found
    ansible = Contender("ansible-core", "forks = hosts, raw tasks, pipelining, ControlMaster cold")
    pyinfra = Contender("pyinfra", "server.shell, --parallel = hosts, ssh_config_file")
    for peer, exe in ((ansible, "ansible-playbook"), (pyinfra, "pyinfra")):
        if not (PEERS / "bin" / exe).exists():
            peer.error = f"{PEERS / 'bin' / exe} not installed (make bench-peers)"
    return [*found, ansible, pyinfra]


def measure(fleet: Fleet, tools: list[Contender], runs: int) -> None:
    """One warm-up and `runs` timed runs per tool, the tools taking turns within each round."""
    for run in range(runs + 1):
        for tool in tools:
            if tool.error is not None:
                continue
            try:
                elapsed = run_once(fleet, tool, run)
            except (OSError, RuntimeError) as exc:
                tool.error = str(exc)
                continue
            if run > 0:
                tool.walls.append(elapsed)


def versions() -> dict[str, str]:
    """What was measured with (peers as installed in bench/.peers-venv)."""
    out = {"python": platform.python_version(), "nproc": str(os.cpu_count())}
    for name, cmd in (
        ("openssh", ["/usr/sbin/sshd", "-V"]),
        ("ansible-core", [str(PEERS / "bin" / "ansible-playbook"), "--version"]),
        ("pyinfra", [str(PEERS / "bin" / "pyinfra"), "--version"]),
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            out[name] = (proc.stdout + proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out[name] = "not available"
    out["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return out


def compile_rollout() -> None:
    """Byte-compile the rollout package, as pip does when it installs one.

    paramiko, ansible-core and pyinfra are measured as installed, with their bytecode; a
    checkout run with PYTHONDONTWRITEBYTECODE set would otherwise compile rollout's modules
    on every start, a cost no installed copy has.
    """
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "rollout")], check=True)


def main() -> None:
    """Start the sshd, measure every contender side by side, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100, help="host aliases on the one sshd")
    parser.add_argument("--steps", type=int, default=5, help="commands per host")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (median), after one warm-up")
    parser.add_argument("--no-peers", action="store_true", help="measure only rollout and the floor")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not 1 <= args.hosts <= 999:
        parser.error("--hosts must be between 1 and 999")
    compile_rollout()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-fleet-") as tmp:
        work = Path(tmp)
        server = start_sshd(work / "sshd")
        try:
            fleet = Fleet(work, server, args.hosts, args.steps)
            tools = contenders(not args.no_peers)
            measure(fleet, tools, args.runs)
        finally:
            stop_sshd(server)
    floor = next((t for t in tools if t.name == "floor" and t.walls), None)
    floor_median = statistics.median(floor.walls) if floor else None
    rows = [t.row(floor_median) for t in tools]
    report = {"hosts": args.hosts, "steps": args.steps, "runs": args.runs, "versions": versions(), "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report)


def print_table(report: dict[str, object]) -> None:
    """The results as a plain table, then what failed and why."""
    print(
        f"{report['hosts']} ssh host aliases on one sshd x {report['steps']} commands; "
        f"whole-process wall, median of {report['runs']} runs after one warm-up"
    )
    print(f"{'tool':<14} {'median s':>9} {'min s':>7} {'max s':>7} {'vs floor':>9}  how")
    rows = report["results"]
    assert isinstance(rows, list)
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<14} {'failed':>9} {'':>7} {'':>7} {'':>9}  {row['note']}")
            continue
        ratio = f"{row['vs_floor']:.2f}x" if row["vs_floor"] else ""
        print(
            f"{row['name']:<14} {row['median_s']:>9.2f} {row['min_s']:>7.2f} {row['max_s']:>7.2f} {ratio:>9}  {row['note']}"
        )
    for row in rows:
        if "error" in row:
            print(f"{row['name']} not measured: {row['error']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in dict(report["versions"]).items()))  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
