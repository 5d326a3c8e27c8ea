"""`rollout export`: a bundle holds the run's evidence with a manifest, never damaged or foreign files.

Invariants: a run whose journal does not verify is never exported (exit 5, no file);
every member is listed in MANIFEST.json with its sha256; nothing outside the run
directory is packed (links are not followed); unpacking refuses a member that would land
outside its directory, a link, or a member the manifest does not vouch for.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from rollout.api.export import unpack_bundle
from rollout.errors import UsageError
from tests.helpers import rollout, write_plan

TINY = {
    "version": 1,
    "name": "tiny",
    "environments": {
        "demo": {"rehearsal": True, "connection": "local", "hosts": {"a": {}}},
        "production": {"connection": "local", "hosts": {"a": {}}},
    },
    "steps": [{"name": "noop", "run": "true", "rollback": "true"}],
}


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path, str]:
    """A plain run of a tiny plan on demo: (state dir, run dir, run id)."""
    plan = write_plan(tmp_path / "plan.yaml", TINY)
    state = tmp_path / "state"
    done = rollout("run", plan, "--env", "demo", "--state-dir", state)
    assert done.returncode == 0, done.stderr
    rundir = next((state / "runs").iterdir())
    return state, rundir, rundir.name


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_a_bundle_holds_the_evidence_and_a_manifest_of_sha256s(
    finished: tuple[Path, Path, str], tmp_path: Path
) -> None:
    state, rundir, run_id = finished
    bundle = tmp_path / "out" / "evidence.tar.gz"  # its directory is made, as CI artefact paths need
    done = rollout("export", run_id, "-o", bundle, "--state-dir", state)
    assert done.returncode == 0, done.stderr
    members = _members(bundle)
    names = {name.split("/", 1)[1] for name in members}
    assert {"journal.jsonl", "head", "plan.sha256", "run.json", "report.md", "plan/plan.yaml", "MANIFEST.json"} <= names
    assert all(name.startswith(f"{run_id}/") for name in members)
    manifest = json.loads(members[f"{run_id}/MANIFEST.json"])
    assert manifest["run_id"] == run_id
    assert manifest["plan_digest"] == (rundir / "plan.sha256").read_text().strip()
    assert manifest["journal_head"]["hash"] in (rundir / "head").read_text()
    assert set(manifest["members"]) == names - {"MANIFEST.json"}
    for rel, digest in manifest["members"].items():
        assert hashlib.sha256(members[f"{run_id}/{rel}"]).hexdigest() == digest
    assert members[f"{run_id}/journal.jsonl"] == (rundir / "journal.jsonl").read_bytes()
    # and it unpacks as a run directory
    unpacked = unpack_bundle(bundle, tmp_path / "unpacked")
    assert (unpacked / "journal.jsonl").read_bytes() == (rundir / "journal.jsonl").read_bytes()


def test_a_run_whose_journal_was_edited_is_not_exported(finished: tuple[Path, Path, str], tmp_path: Path) -> None:
    state, rundir, run_id = finished
    journal = rundir / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"ok"', b'"no"', 1) if b'"ok"' in lines[2] else lines[2].replace(b"a", b"b", 1)
    journal.write_bytes(b"\n".join(lines))
    bundle = tmp_path / "evidence.tar.gz"
    done = rollout("export", run_id, "-o", bundle, "--state-dir", state)
    assert done.returncode == 5
    assert "does not verify" in done.stderr
    assert "nothing was exported" in done.stderr
    assert not bundle.exists()


def test_a_missing_report_is_rendered_into_the_bundle(finished: tuple[Path, Path, str], tmp_path: Path) -> None:
    state, rundir, run_id = finished
    (rundir / "report.md").unlink()
    bundle = tmp_path / "evidence.tar.gz"
    done = rollout("export", run_id, "-o", bundle, "--state-dir", state)
    assert done.returncode == 0, done.stderr
    assert run_id in _members(bundle)[f"{run_id}/report.md"].decode()
    assert not (rundir / "report.md").exists()  # export writes nothing into the run directory


def test_nothing_outside_the_run_directory_is_packed(finished: tuple[Path, Path, str], tmp_path: Path) -> None:
    state, rundir, run_id = finished
    secret = tmp_path / "secret.txt"
    secret.write_text("not evidence")
    (rundir / "plan" / "extra.yaml").symlink_to(secret)
    (rundir / "notes.txt").write_text("not evidence either")
    bundle = tmp_path / "evidence.tar.gz"
    assert rollout("export", run_id, "-o", bundle, "--state-dir", state).returncode == 0
    members = _members(bundle)
    assert not any(b"not evidence" in data for data in members.values())
    assert not any(name.endswith(("extra.yaml", "notes.txt")) for name in members)


def _tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.mark.parametrize(
    ("name", "kind", "why"),
    [
        ("../escape", tarfile.REGTYPE, "outside"),
        ("/abs/journal.jsonl", tarfile.REGTYPE, "outside"),
        ("R1/../../escape", tarfile.REGTYPE, "outside"),
        ("R1/journal.jsonl", tarfile.SYMTYPE, "not a regular file"),
        ("R1/head", tarfile.LNKTYPE, "not a regular file"),
        ("R1/dev", tarfile.CHRTYPE, "not a regular file"),
    ],
)
def test_a_hostile_bundle_is_refused_before_anything_is_written(
    tmp_path: Path, name: str, kind: bytes, why: str
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    bundle = _tar(tmp_path / "bad.tar.gz", [info], {name: b"x"} if kind == tarfile.REGTYPE else {})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UsageError, match=why):
        unpack_bundle(bundle, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_a_member_the_manifest_does_not_vouch_for_is_refused(finished: tuple[Path, Path, str], tmp_path: Path) -> None:
    state, _rundir, run_id = finished
    bundle = tmp_path / "evidence.tar.gz"
    assert rollout("export", run_id, "-o", bundle, "--state-dir", state).returncode == 0
    members = _members(bundle)
    members[f"{run_id}/journal.jsonl"] += b'{"forged": true}\n'
    infos = [tarfile.TarInfo(name) for name in members]
    forged = _tar(tmp_path / "forged.tar.gz", infos, members)
    with pytest.raises(UsageError, match="does not match its sha256"):
        unpack_bundle(forged, tmp_path / "dest")
