"""When a run opens its SSH connections: in parallel, bounded by `concurrency`, and before they are needed.

Invariants, against a real sshd (six hosts = six aliases of the fixture server):

- the pre-check opens every host's connection, every wave's, with up to `concurrency`
  handshakes in flight at once, and more than one (they are not opened one by one);
- no step of a later wave opens a TCP connection: every host's connection was opened
  before the previous wave's bake ended, and a connection that dropped during the bake is
  opened again before the bake ends, not by the next wave's first step;
- a fleet's ssh config is parsed once for all its hosts, not once per host.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import paramiko
import pytest

import rollout.executors.ssh as ssh_module
from rollout.engine.apply import Engine
from rollout.engine.connections import JOIN_MARGIN
from rollout.engine.events import Bus
from rollout.engine.outcomes import Cause
from rollout.engine.prepare import prepare_schedule
from rollout.event import Event, EventKind, Outcome
from rollout.executors.base import Target
from rollout.executors.ssh import SshExecutor
from rollout.planfile import load_plan
from tests.conftest_sshd import SshdServer

HOSTS = [f"h{i}" for i in range(1, 7)]
CONCURRENCY = 3
DEADLINE = 30.0  # seconds any one wait in these tests may take before it fails the test
CONNECT_TIMEOUT = 5  # the aliases' ConnectTimeout


def _fleet_plan(tmp_path: Path, sshd: SshdServer, *, waves: str = "[2, 100%]") -> Path:
    """Six ssh hosts, each an alias of the fixture sshd in a private ssh config; 2 waves with a bake."""
    config = tmp_path / "ssh_config"
    config.write_text(
        "".join(
            f"Host {h}\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
            f"  IdentityFile {sshd.identity_file}\n  IdentitiesOnly yes\n  UserKnownHostsFile {sshd.known_hosts}\n"
            f"  ConnectTimeout {CONNECT_TIMEOUT}\n"
            for h in HOSTS
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: connections\n"
        "environments:\n"
        "  lab:\n"
        "    rehearsal: true\n"
        "    connection: ssh\n"
        f"    ssh: {{config: {config}}}\n"
        "    hosts: {" + ", ".join(f"{h}: {{}}" for h in HOSTS) + "}\n"
        f"strategy: {{waves: {waves}, concurrency: {CONCURRENCY}, bake: 1s}}\n"
        "steps:\n"
        f"  - {{name: one, run: 'echo one >> {out}/{{{{ host }}}}', rollback: 'echo undo-one >> {out}/{{{{ host }}}}'}}\n"
        f"  - {{name: two, run: 'echo two >> {out}/{{{{ host }}}}', rollback: 'echo undo-two >> {out}/{{{{ host }}}}'}}\n"
    )
    return plan


class Recorder:
    """One ordered log of the engine's events and of every SSH connection opened (start and end)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, Any, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.connects: list[str] = []
        # Handshakes wait here for each other: if connections were opened one at a time,
        # the barrier could never fill and the test fails at the deadline instead of hanging.
        self.barrier = threading.Barrier(CONCURRENCY)
        self.barrier_broken = False
        self.on_event: dict[tuple[str, int | None], Any] = {}
        self.on_reconnect: Any = None  # called before a connection is opened again

    def emit(self, event: Event, *, sync: bool) -> None:
        """The bus sink: log the event, then run the hook registered for it, if any."""
        with self.lock:
            self.log.append(("event", event.kind, event.wave))
        hook = self.on_event.get((event.kind, event.wave))
        if hook is not None:
            hook()

    def connect(self, real: Any) -> Any:
        """A wrapper for ssh_connect.connect that logs each handshake and counts those in flight."""

        def connect(target: Target, known_hosts: str) -> tuple[paramiko.SSHClient, socket.socket]:
            with self.lock:
                self.connects.append(target.name)
                self.log.append(("connect", target.name, None))
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                if len(self.connects) <= len(HOSTS):  # the pre-check's round; a reconnect waits for nobody
                    try:
                        self.barrier.wait(timeout=DEADLINE)
                    except threading.BrokenBarrierError:
                        self.barrier_broken = True
                elif self.on_reconnect is not None:
                    self.on_reconnect()
                return real(target, known_hosts)
            finally:
                with self.lock:
                    self.in_flight -= 1
                    self.log.append(("connected", target.name, None))

        return connect

    def position(self, kind: str, wave: int) -> int:
        """Where an event is in the log."""
        return next(i for i, entry in enumerate(self.log) if entry == ("event", kind, wave))


def _engine(tmp_path: Path, sshd: SshdServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(ssh_module, "connect", recorder.connect(ssh_module.connect))
    schedule = prepare_schedule(load_plan(_fleet_plan(tmp_path, sshd)), "lab", run_id="connections")
    return Engine(schedule, Bus(recorder))


@pytest.mark.ssh
def test_every_waves_connections_open_in_parallel_bounded_by_concurrency_before_the_first_change(
    tmp_path: Path, sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    engine = _engine(tmp_path, sshd, recorder, monkeypatch)

    result = engine.run()

    assert result.outcome == Outcome.SUCCEEDED, result
    assert not recorder.barrier_broken, "handshakes were not in flight together: connections opened one by one"
    assert recorder.most_in_flight == CONCURRENCY, "more handshakes in flight than the plan's concurrency"
    assert sorted(recorder.connects) == HOSTS, "one connection per host for the whole run, none reopened"
    first_change = recorder.position(EventKind.WAVE_START, 1)
    last_connected = max(i for i, entry in enumerate(recorder.log) if entry[0] == "connected")
    assert last_connected < first_change, "every wave's hosts are connected before wave 1 starts"
    assert [(tmp_path / "out" / h).read_text() for h in HOSTS] == ["one\ntwo\n"] * len(HOSTS)


def _drop(engine: Engine, hosts: tuple[str, ...]) -> None:
    """Cut the hosts' kept connections, as a NAT or a restarted sshd would, and wait until the client knows."""
    for host in hosts:
        executor = engine.executor(host)
        assert isinstance(executor, SshExecutor)
        transport = executor._client.get_transport() if executor._client else None
        assert transport is not None
        assert transport.is_active()
        assert executor._sock is not None
        executor._sock.shutdown(socket.SHUT_RDWR)
        transport.join(DEADLINE)  # its reader thread ends on the EOF: the drop is known
        assert not transport.is_active()


@pytest.mark.ssh
def test_a_connection_dropped_during_the_bake_is_reopened_before_the_next_wave_starts(
    tmp_path: Path, sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    engine = _engine(tmp_path, sshd, recorder, monkeypatch)
    dropped = engine.schedule.waves[1].hosts[:2]
    recorder.on_event[(EventKind.WAVE_END, 1)] = lambda: _drop(engine, dropped)  # the bake starts after it

    result = engine.run()

    assert result.outcome == Outcome.SUCCEEDED, result
    reopened = recorder.connects[len(HOSTS) :]
    assert sorted(reopened) == sorted(dropped), "exactly the dropped connections were opened again"
    next_wave = recorder.position(EventKind.WAVE_START, 2)
    reconnected = [i for i, entry in enumerate(recorder.log) if entry[0] == "connected"][len(HOSTS) :]
    assert max(reconnected) < next_wave, "the next wave's first steps found their connections open"


@pytest.mark.ssh
def test_an_abort_during_the_bake_does_not_wait_for_a_reconnect_in_flight(
    tmp_path: Path, sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    engine = _engine(tmp_path, sshd, recorder, monkeypatch)
    dropped = engine.schedule.waves[1].hosts[:1]
    recorder.on_event[(EventKind.WAVE_END, 1)] = lambda: _drop(engine, dropped)
    rollback_started = threading.Event()
    recorder.on_event[(EventKind.ROLLBACK_START, None)] = rollback_started.set
    waited: list[bool] = []

    def reconnect_hangs_until_the_rollback_starts() -> None:
        engine.abort(Cause("interrupt", "interrupted during the bake"))
        # A reconnect to an unreachable host can take its whole connect timeout; the
        # rollback must not wait for it. Waiting here for less than the bake would wait for
        # a reconnect (its connect timeout + JOIN_MARGIN) tells the two apart.
        waited.append(rollback_started.wait(CONNECT_TIMEOUT + JOIN_MARGIN - 2))

    recorder.on_reconnect = reconnect_hangs_until_the_rollback_starts

    result = engine.run()

    assert result.outcome == Outcome.INTERRUPTED, result
    assert waited == [True], "the rollback waited for a reconnect the next wave would never use"
    assert EventKind.WAVE_START not in [entry[1] for entry in recorder.log if entry[2] == 2]
    wave1 = engine.schedule.waves[0].hosts
    assert [(tmp_path / "out" / h).read_text() for h in wave1] == ["one\ntwo\nundo-two\nundo-one\n"] * len(wave1)


def test_a_fleets_ssh_config_is_parsed_whole_once_for_all_its_hosts(
    tmp_path: Path, sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[str] = []
    real = paramiko.SSHConfig.from_text

    def counting(text: str) -> paramiko.SSHConfig:
        parses.append(text)
        return real(text)

    monkeypatch.setattr(paramiko.SSHConfig, "from_text", staticmethod(counting))
    schedule = prepare_schedule(load_plan(_fleet_plan(tmp_path, sshd)), "lab", run_id="parse-once")

    # The whole file once; each host's lookup then reads only the blocks that name it.
    whole = [text for text in parses if text.count("Host ") > 1]
    assert len(whole) <= 1, f"the whole ssh config was parsed {len(whole)} times for {len(HOSTS)} hosts"
    assert all(text.count("Host ") <= 1 for text in parses if text not in whole)
    assert {h.target.port for h in schedule.hosts.values()} == {sshd.port}
    assert {h.target.address for h in schedule.hosts.values()} == {sshd.host}
