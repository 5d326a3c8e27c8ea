"""`rollout verify` on the journal of a real run: intact, then tampered with in every way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import RUNTIME_BREAK, PlanSpec, cli_env, rollout, run_args, running_fleet, write_exchange_plan

Tamper = Callable[[list[bytes]], list[bytes]]
MIDDLE = 10  # a line in the middle of the run (1-based), well before the last one


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of one real, rolled-back run, its head signed (ROLLOUT_SIGN_KEY).

    Beside the state directory: `run.out` (its terminal output), `key`, `allowed_signers`.
    """
    root = tmp_path_factory.mktemp("verify")
    key = root / "key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    pub = (root / "key.pub").read_text().split()
    (root / "allowed_signers").write_text(f"ops@example {pub[0]} {pub[1]}\n")
    with running_fleet(root / "fleet", 2) as fleet:
        plan = write_exchange_plan(root, fleet, PlanSpec(release=RUNTIME_BREAK, waves=(1, "100%"), probe_verify=False))
        result = rollout(*run_args(plan, root / "state"), env=cli_env(ROLLOUT_SIGN_KEY=str(key)))
        assert result.returncode == 1, result.stdout + result.stderr
        (root / "run.out").write_text(result.stdout)
    return root / "state"


def _copy(recorded: Path, tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    journal = next((state / "runs").iterdir()) / "journal.jsonl"
    return state, journal


def _verify(state: Path) -> tuple[int, str, dict[str, object]]:
    text = rollout("verify", "last", "--state-dir", state)
    js = rollout("verify", "last", "--state-dir", state, "--json")
    assert js.returncode == text.returncode
    return text.returncode, text.stdout + text.stderr, json.loads(js.stdout)


def test_intact_journal_of_a_real_run_verifies(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    code, out, data = _verify(state)
    assert code == 0, out
    assert out.startswith("intact: ")
    lines = journal.read_bytes().splitlines()
    assert data["ok"] is True
    assert data["records"] == len(lines)
    assert data["plan_copy_matches"] is True


def _edit(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[MIDDLE - 1])
    obj["ts"] = "2000-01-01T00:00:00.000Z"
    lines[MIDDLE - 1] = json.dumps(obj, separators=(",", ":")).encode()
    return lines


def _remove(lines: list[bytes]) -> list[bytes]:
    del lines[MIDDLE - 1]
    return lines


def _reorder(lines: list[bytes]) -> list[bytes]:
    lines[MIDDLE - 1], lines[MIDDLE] = lines[MIDDLE], lines[MIDDLE - 1]
    return lines


def _insert(lines: list[bytes]) -> list[bytes]:
    lines.insert(MIDDLE, lines[MIDDLE - 1])
    return lines


def _truncate(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    return lines


@pytest.mark.parametrize(
    ("tamper", "first_bad", "newline_at_end"),
    [
        # an edited line keeps its own prev; the next line's prev no longer matches its hash,
        # and the line after that still chains to the next: the edited line itself is named
        (_edit, MIDDLE, True),
        (_remove, MIDDLE, True),
        (_reorder, MIDDLE, True),
        (_insert, MIDDLE + 1, True),
        (_truncate, None, False),
    ],
    ids=["edited", "removed", "reordered", "inserted", "truncated"],
)
def test_tampered_journal_fails_verification_naming_the_first_bad_line(
    recorded: Path, tmp_path: Path, tamper: Tamper, first_bad: int | None, newline_at_end: bool
) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    count = len(lines)
    damaged = tamper(lines)
    journal.write_bytes(b"\n".join(damaged) + (b"\n" if newline_at_end else b""))
    code, out, data = _verify(state)
    expected = count if first_bad is None else first_bad  # a torn last line is the last line
    assert code == 5, out
    assert out.startswith(f"DAMAGED: line {expected}: "), out
    assert data["ok"] is False
    assert data["first_bad_line"] == expected


def test_verify_of_an_unknown_run_is_a_usage_error(recorded: Path) -> None:
    result = rollout("verify", "no-such-run", "--state-dir", recorded)
    assert result.returncode == 2
    assert "no run 'no-such-run'" in result.stderr


# --- anchors outside the journal: a cut or rewritten tail ---------------------------------


def _last_run_end(lines: list[bytes]) -> int:
    return max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "run.end")


def test_the_run_prints_its_head_last_and_the_head_file_and_report_agree(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    head = json.loads((journal.parent / "head").read_text())
    assert head["seq"] == len(lines)
    assert head["closed"] is True
    printed = (recorded.parent / "run.out").read_text().rstrip().splitlines()[-1]
    assert printed.strip().startswith(f"journal head {head['seq']}:{head['hash']}"), printed
    code, out, data = _verify(state)
    assert code == 0, out
    assert any(a.startswith("head file ") for a in data["anchors_checked"]), data  # type: ignore[union-attr]
    assert any(a.startswith("report ") for a in data["anchors_checked"]), data  # type: ignore[union-attr]


def test_an_edited_run_end_outcome_is_damaged_and_runs_does_not_believe_it(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    at = _last_run_end(lines)
    assert at == len(lines) - 1, "this run journals nothing after run.end: the edit is the last line"
    lines[at] = lines[at].replace(b'"outcome":"rolled_back"', b'"outcome":"succeeded"')
    assert b'"succeeded"' in lines[at]
    journal.write_bytes(b"\n".join(lines) + b"\n")
    code, out, data = _verify(state)
    assert code == 5, out
    assert out.startswith(f"DAMAGED: line {len(lines)}: "), out
    assert "head file" in out
    assert str(data["anchor"]).startswith("head file ")
    history = rollout("runs", "--json", "--state-dir", state)
    (entry,) = json.loads(history.stdout)
    assert entry["outcome"].startswith("damaged"), entry
    assert "succeeded" not in entry["outcome"]


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_cutting_the_last_lines_is_damaged_naming_the_anchor(recorded: Path, tmp_path: Path, cut: int) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    journal.write_bytes(b"\n".join(lines[:-cut]) + b"\n")
    code, out, data = _verify(state)
    assert code == 5, out
    assert out.startswith(f"DAMAGED: line {len(lines) - cut + 1}: "), out
    assert "cut off" in out
    assert data["first_bad_line"] == len(lines) - cut + 1
    # even with the head file removed too, the report still records the head
    (journal.parent / "head").unlink()
    code, out, data = _verify(state)
    assert code == 5, out
    assert str(data["anchor"]).startswith("report "), out
    history = rollout("runs", "--json", "--state-dir", state)
    assert json.loads(history.stdout)[0]["outcome"].startswith("damaged")


def test_an_edited_line_in_the_middle_is_named_itself(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    for n in (2, MIDDLE, len(lines) - 2):
        edited = list(lines)
        edited[n - 1] = edited[n - 1].replace(b'"ts":"', b'"ts":"1', 1)
        journal.write_bytes(b"\n".join(edited) + b"\n")
        code, out, data = _verify(state)
        assert code == 5, out
        assert data["first_bad_line"] == n, out


def test_head_given_on_the_command_line_catches_what_no_file_anchor_can(recorded: Path, tmp_path: Path) -> None:
    """An attacker who cuts the tail and also rewrites head file and report is caught by the printed head."""
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    printed = f"{len(lines)}:{hashlib.sha256(lines[-1]).hexdigest()}"
    assert rollout("verify", "last", "--state-dir", state, "--head", printed).returncode == 0
    journal.write_bytes(b"\n".join(lines[:-2]) + b"\n")
    (journal.parent / "head").unlink()
    (journal.parent / "report.md").unlink()
    assert rollout("verify", "last", "--state-dir", state).returncode == 0  # nothing left to compare with
    result = rollout("verify", "last", "--state-dir", state, "--head", printed)
    assert result.returncode == 5
    assert result.stdout.startswith(f"DAMAGED: line {len(lines) - 1}: "), result.stdout
    assert "--head" in result.stdout
    bad = rollout("verify", "last", "--state-dir", state, "--head", "12:nothex")
    assert bad.returncode == 2
    assert "SEQ:HASH" in bad.stderr


def test_the_signed_head_checks_with_ssh_keygen_and_with_verify(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    signers = recorded.parent / "allowed_signers"
    head = journal.parent / "head"
    stock = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(signers),
            "-I",
            "ops@example",
            "-n",
            "rollout-journal-head",
            "-s",
            str(journal.parent / "head.sig"),
        ],
        input=head.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert stock.returncode == 0, stock.stderr
    ok = rollout("verify", "last", "--state-dir", state, "--allowed-signers", signers)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "head signed by ops@example" in ok.stdout


def test_a_cut_tail_with_a_rewritten_head_file_fails_the_signature(recorded: Path, tmp_path: Path) -> None:
    state, journal = _copy(recorded, tmp_path)
    lines = journal.read_bytes().splitlines()
    kept = lines[:-3]
    journal.write_bytes(b"\n".join(kept) + b"\n")
    forged = {"run_id": journal.parent.name, "seq": len(kept), "hash": hashlib.sha256(kept[-1]).hexdigest()}
    (journal.parent / "head").write_text(json.dumps({**forged, "closed": True}, separators=(",", ":")) + "\n")
    (journal.parent / "report.md").unlink()
    result = rollout("verify", "last", "--state-dir", state, "--allowed-signers", recorded.parent / "allowed_signers")
    assert result.returncode == 5, result.stdout + result.stderr
    assert result.stdout.startswith("DAMAGED: "), result.stdout
    assert "head.sig" in result.stdout


def test_signing_without_ssh_keygen_is_refused_before_any_change(recorded: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = rollout(
        *run_args(tmp_path / "plan.yaml", tmp_path / "state", "--sign-key", recorded.parent / "key"),
        env=cli_env(PATH=str(empty)),
    )
    assert result.returncode == 2
    assert "ssh-keygen" in result.stderr
    assert "openssh-client" in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_fifo_named_as_a_status_file_in_the_journal_does_not_hang_verify(tmp_path: Path) -> None:
    from rollout.event import Event
    from rollout.journal import Journal
    from tests.test_journal import DIGEST, RUN_ID, start_event

    fifo = tmp_path / "status.fifo"
    os.mkfifo(fifo)
    state = tmp_path / "state"
    with Journal.create(state / "runs" / RUN_ID / "journal.jsonl", run_id=RUN_ID, plan_digest=DIGEST) as journal:
        journal.append(start_event(), sync=True)
        journal.append(Event("notify.delivery", outcome="delivered", data={"sink": f"file {fifo}"}), sync=True)
        journal.append(Event("run.end", outcome="succeeded"), sync=True)
    result = rollout("verify", RUN_ID, "--state-dir", state, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("intact: 3 events")
