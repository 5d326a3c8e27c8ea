"""The fault matrix: one test per hostile condition rollout must survive, named by the case.

Each case states what must hold and checks it against real parts (a real journal on disk,
real subprocesses, the real sshd, real HTTP servers on 127.0.0.1), reusing the focused
tests and helpers of the other test modules so the matrix stays one readable list and
each case stays fast.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.event import Event
from rollout.journal import Journal, read_journal, verify_journal
from tests import test_atomic as atomic_tests
from tests import test_engine_journal_failure as journal_failure_tests
from tests import test_hostile_inputs as input_tests
from tests import test_http_deadline as http_tests
from tests import test_journal as journal_tests
from tests import test_metadata_paths as metadata_path_tests
from tests import test_plan_errors as plan_error_tests
from tests import test_recover as recover_tests
from tests import test_redaction_encodings as redaction_tests
from tests import test_ssh_run as ssh_run_tests
from tests import test_template as template_tests
from tests.conftest_sshd import SshdServer
from tests.helpers import Cli, Fleet, running_fleet

RUN_ID = journal_tests.RUN_ID
DIGEST = journal_tests.DIGEST
GOLDEN_JOURNAL = Path(__file__).parent / "golden" / "rolled-back" / "journal.jsonl"


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "runs" / RUN_ID / "journal.jsonl"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", 3) as f:
        yield f


@pytest.fixture
def trickle() -> Iterator[http_tests.TrickleServer]:
    server = http_tests.TrickleServer()
    server.thread.start()
    yield server
    server.close()


# --- 1-3: the orchestrator dies at a journal write ---------------------------------------


def test_crash_at_every_journal_write_leaves_a_journal_recover_can_continue(tmp_path: Path) -> None:
    """Every prefix of a real run's journal (a crash after each write) reads clean and reopens."""
    lines = GOLDEN_JOURNAL.read_bytes().splitlines(keepends=True)
    first = json.loads(lines[0])["data"]
    for cut in range(1, len(lines) + 1):
        path = tmp_path / f"crash-{cut}" / "journal.jsonl"
        path.parent.mkdir()
        path.write_bytes(b"".join(lines[:cut]))
        assert verify_journal(path).ok, cut
        with Journal.reopen(path, run_id=first["run_id"], plan_digest=first["plan_digest"]) as journal:
            journal.append(Event("run.end", outcome="rolled_back"), sync=True)
        assert verify_journal(path, anchors=()).ok, cut
        assert len(read_journal(path).records) == cut + 1


def test_crash_after_a_step_intent_then_recover_puts_every_target_back(tmp_path: Path, fleet: Fleet) -> None:
    recover_tests.test_recover_after_sigkill_puts_every_target_back(tmp_path, fleet, recover_tests.after_intent)


def test_crash_after_a_step_outcome_then_recover_puts_every_target_back(tmp_path: Path, fleet: Fleet) -> None:
    recover_tests.test_recover_after_sigkill_puts_every_target_back(tmp_path, fleet, recover_tests.after_outcome)


# --- 4-5: torn tails -------------------------------------------------------------------------


def test_torn_tail_is_named_by_verify(journal_path: Path) -> None:
    journal_tests.test_truncated_last_line_is_not_ok_and_named(journal_path, 40)


def test_torn_tail_is_set_aside_and_the_chain_continues(journal_path: Path) -> None:
    journal_tests.test_reopen_sets_a_torn_line_aside_and_continues_the_chain(journal_path)


# --- 6-8: the disk fails under the journal ----------------------------------------------


def test_disk_full_stops_the_run_before_the_next_change_and_rolls_back(tmp_path: Path) -> None:
    journal_failure_tests.test_a_journal_write_error_stops_forward_work_and_rolls_back_what_was_applied(tmp_path)


def test_disk_full_on_an_intent_never_runs_that_change(tmp_path: Path) -> None:
    journal_failure_tests.test_an_intent_that_cannot_be_journaled_is_never_executed(tmp_path)


def test_fsync_eio_refuses_every_later_append(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal_tests.test_fsync_error_raises_and_refuses_further_appends(journal_path, monkeypatch)


# --- 9-11: SSH ------------------------------------------------------------------------------


class _FreezingProxy:
    """A TCP proxy on 127.0.0.1 to sshd that stops forwarding (a frozen link) when told."""

    def __init__(self, port: int) -> None:
        self.frozen = threading.Event()
        self.closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._upstream = port
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.closing.is_set():
                data = source.recv(65536)
                if not data:
                    return
                if self.frozen.is_set():
                    self.closing.wait()  # hold the bytes: the peer sees silence, not a reset
                    return
                sink.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        """Drop every connection."""
        self.closing.set()
        for sock in self._sockets:
            sock.close()


def test_ssh_freeze_fails_within_the_connect_timeout_not_forever(sshd: SshdServer, tmp_path: Path) -> None:
    """The link to a connected host goes silent (no reset): the next command fails in bounded time."""
    from rollout.errors import ExecutorError
    from rollout.executors.ssh import SshExecutor

    proxy = _FreezingProxy(sshd.port)
    known = tmp_path / "known_hosts"
    known.write_text(
        Path(sshd.known_hosts).read_text().replace(f"[{sshd.host}]:{sshd.port}", f"[{sshd.host}]:{proxy.port}")
    )
    executor = SshExecutor(sshd.target(port=proxy.port, known_hosts=str(known), connect_timeout=2.0))
    try:
        assert executor.run("echo up", timeout=10).stdout.strip() == "up"
        proxy.frozen.set()
        started = time.monotonic()
        try:
            result = executor.run("echo never", timeout=1.0)
        except ExecutorError as exc:
            failure = str(exc)
        else:
            assert not result.ok
            failure = "timed out" if result.timed_out else f"exit {result.exit_code}"
        took = time.monotonic() - started
    finally:
        proxy.close()
        executor.close()
    assert failure
    # at most the connect timeout to open a channel, the command's timeout, and slack for load
    assert took < 2.0 + 1.0 + 3.0, (took, failure)


def test_unknown_ssh_host_key_refuses_the_run_before_any_change(
    tmp_path: Path, sshd: SshdServer, empty_known_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh_run_tests.test_an_unknown_host_key_refuses_the_run_before_any_change(tmp_path, sshd, empty_known_hosts, capsys)


def test_changed_ssh_host_key_refuses_the_run(
    tmp_path: Path, sshd: SshdServer, wrong_known_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ssh_run_tests.test_a_changed_host_key_refuses_the_run(tmp_path, sshd, wrong_known_hosts, capsys)


# --- 12: clocks ---------------------------------------------------------------------------


def test_wall_clock_jumps_do_not_disorder_the_journal(journal_path: Path) -> None:
    """Wall time jumps back an hour and forward a day: mono stays ordered and the chain verifies."""
    walls = iter([1_800_000_000.0, 1_800_000_001.0, 1_799_996_401.0, 1_800_086_401.0, 1_800_086_402.0])
    ticks = iter([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    with Journal.create(
        journal_path, run_id=RUN_ID, plan_digest=DIGEST, clock=lambda: next(ticks), wall=lambda: next(walls)
    ) as journal:
        journal.append(journal_tests.start_event(), sync=True)
        for kind in ("step.intent", "step.result", "step.intent"):
            journal.append(Event(kind, host="web-1", step="upgrade"), sync=True)
        journal.append(Event("run.end", outcome="ok"), sync=True)
    records = read_journal(journal_path).records
    monos = [r.mono for r in records]
    assert monos == sorted(monos)
    assert records[2].ts < records[1].ts  # the wall time went back, as recorded, not hidden
    assert verify_journal(journal_path).ok


# --- 13-15: malformed plans ----------------------------------------------------------------


def test_malformed_yaml_of_every_kind_is_refused_with_its_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(plan_error_tests.CASES) >= 24
    for name, case in plan_error_tests.CASES.items():
        case_dir = tmp_path / name.replace(" ", "-")
        case_dir.mkdir()
        plan_error_tests.test_bad_plan_is_refused_with_a_located_error(case, case_dir, capsys)


def test_yaml_alias_bomb_is_refused_within_a_second_in_bounded_memory(tmp_path: Path) -> None:
    plan_error_tests.test_alias_bomb_is_refused_within_a_second_in_bounded_memory(tmp_path)


def test_recursive_yaml_alias_is_refused(tmp_path: Path) -> None:
    plan_error_tests.test_recursive_alias_is_refused(tmp_path)


# --- 16-17: includes and shell --------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["include leaving the directory", "absolute include", "include through a symlink out of the directory"],
)
def test_include_traversal_is_refused(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_error_tests.test_bad_plan_is_refused_with_a_located_error(plan_error_tests.CASES[case], tmp_path, capsys)


def test_shell_metacharacters_in_values_arrive_literally(tmp_path: Path) -> None:
    template_tests.test_shell_metacharacters_in_a_value_arrive_literally(tmp_path)


# --- 18-: deadlines, secrets, evidence, short writes ------------------------------------------


def test_trickling_http_server_fails_a_check_at_its_overall_deadline(trickle: http_tests.TrickleServer) -> None:
    http_tests.test_a_trickling_server_times_out_at_the_overall_deadline(trickle)


def test_trickling_http_probe_yields_to_an_interrupt(trickle: http_tests.TrickleServer) -> None:
    http_tests.test_a_probe_yields_to_an_interrupt_long_before_its_timeout(trickle)


def test_secrets_in_wrapped_offset_and_lowercase_percent_encodings_are_redacted() -> None:
    redaction_tests.test_bearer_token_base64_and_gnu_wrapping_and_lowercase_percent_examples()


def test_cut_tail_and_rewritten_last_line_are_caught_by_the_head_file(journal_path: Path) -> None:
    from rollout.journal import read_head_file

    journal_tests.write_journal(journal_path, lines=8)
    anchor = read_head_file(journal_path)
    assert anchor is not None
    assert anchor.final
    lines = journal_tests.lines_of(journal_path)
    for cut in range(1, 6):
        journal_path.write_bytes(b"".join(lines[:-cut]))
        result = verify_journal(journal_path, anchors=(anchor,))
        assert not result.ok
        assert result.first_bad_line == len(lines) - cut + 1
        assert result.anchor == anchor.source
    rewritten = [*lines[:-1], lines[-1].replace(b'"outcome":"ok"', b'"outcome":"no"')]
    journal_path.write_bytes(b"".join(rewritten))
    result = verify_journal(journal_path, anchors=(anchor,))
    assert not result.ok
    assert result.first_bad_line == len(lines)


def test_disk_full_while_writing_a_report_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    atomic_tests.test_disk_full_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch)


def test_short_writes_of_a_report_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    atomic_tests.test_report_on_a_full_disk_is_not_cut_short(tmp_path, monkeypatch)


# --- inputs that cost without bound or pass silently ------------------------------------------


def test_nested_template_bomb_fails_fast_naming_the_variable(tmp_path: Path) -> None:
    input_tests.test_nested_variable_bomb_fails_fast_naming_the_variable_where_it_is_defined(tmp_path)


def test_absurd_durations_are_refused_at_validate_time_with_their_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absurd = [
        "absurdly long duration",
        "timeout that is not a number",
        "guard period of infinity",
        "negative bake",
        "zero step timeout",
        "check timeout over an hour",
        "duration in non-ASCII digits",
    ]
    for name in absurd:
        case_dir = tmp_path / name.replace(" ", "-")
        case_dir.mkdir()
        plan_error_tests.test_bad_plan_is_refused_with_a_located_error(plan_error_tests.CASES[name], case_dir, capsys)


def test_a_metadata_key_path_that_matches_nothing_is_an_error(cli: Cli) -> None:
    metadata_path_tests.test_unique_with_a_typo_is_exit_2_on_a_file_with_a_duplicate(cli)
    metadata_path_tests.test_diff_with_a_key_typo_is_exit_2_not_zero_changes(cli)


def test_an_unknown_var_is_refused_naming_the_closest_variable(tmp_path: Path, cli: Cli) -> None:
    input_tests.test_an_unknown_var_is_exit_2_naming_the_closest_variable(tmp_path, cli, "run")


def test_templates_in_ssh_options_are_rendered_or_located(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "rendered").mkdir()
    (tmp_path / "undefined").mkdir()
    input_tests.test_ssh_options_and_addresses_are_rendered_for_each_host(tmp_path / "rendered")
    input_tests.test_an_undefined_variable_in_an_ssh_option_is_located(tmp_path / "undefined", cli)


def test_an_include_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    input_tests.test_an_include_that_is_a_fifo_is_refused_without_blocking(tmp_path)
