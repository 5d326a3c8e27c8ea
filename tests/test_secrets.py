"""Secret variables never leave the process: journal, display, output, reports, notifications.

Real runs (one that succeeds, one that rolls back) of a plan whose secrets are echoed by a
step (raw, base64 and URL-encoded), templated into commands, a webhook URL and its headers.
Then every file under the state directory, the CLI's stdout and stderr, the report in all
three formats and every notification received are searched for every form of every secret.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PlanSpec, cli_env, exchange_plan, rollout, run_args, running_fleet, write_plan
from tests.test_notify import Webhook

VALUE_SECRET = "v4lue-S3cret/with+plus"  # declared with `value:` in the plan file
ENV_SECRET = "env:P@ss w0rd&more=1"  # declared with `env:`: it is in no file at all
ENV_NAME = "ROLLOUT_TEST_DB_PASSWORD"

ECHO_SECRETS = (
    "printf 'token=%s password=%s\\n' {{ api_token }} {{ db_password }} && "
    "printf %s {{ api_token }} | base64 && printf %s {{ db_password }} | base64 && "
    "python3 -c 'import sys, urllib.parse as u; [print(u.quote(a, safe=\"\"), u.quote_plus(a)) for a in sys.argv[1:]]' "
    "{{ api_token }} {{ db_password }} && "
    # GNU base64 wraps at 76 columns; a bearer header puts the secret off a 3-byte boundary;
    # lowercase percent-encoding is what many tools print
    "printf 'padding-padding-padding-padding-%s-%s-padding-padding-padding' {{ api_token }} {{ db_password }} | base64 && "
    "printf 'Bearer %s' {{ api_token }} | base64 && printf 'Authorization: Bearer %s' {{ db_password }} | base64 -w0 && "
    "python3 -c 'import sys, re, urllib.parse as u; "
    '[print(re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), u.quote(a, safe=""))) for a in sys.argv[1:]]\' '
    "{{ api_token }} {{ db_password }}"
)


def forms(secret: str) -> set[str]:
    """The secret as it could leak: raw, base64 at every byte offset (standard and URL-safe), URL-encoded."""
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    found = {
        secret,
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe="").lower(),
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(secret, safe="")),
        urllib.parse.quote_plus(secret),
    }
    for offset in range(3):  # the characters only the secret decides, inside a longer base64 value
        first, last = -(-8 * offset // 6), (8 * (offset + len(raw))) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.add(encode(b"\x00" * offset + raw + b"\x00\x00").decode()[first:last])
    return found


ALL_FORMS = forms(VALUE_SECRET) | forms(ENV_SECRET)


def leaks(text: str, secret_forms: set[str] = ALL_FORMS) -> list[str]:
    """Which forms of the secrets appear in the text, also across line breaks (wrapped base64)."""
    unbroken = re.sub(r"[\r\n]", "", text)
    return sorted(f for f in secret_forms if f in text or f in unbroken)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def secret_plan(tmp_path: Path, fleet: Any, hook: Webhook, *, fail: bool) -> Path:
    """The exchange plan plus secrets used everywhere a plan can use a value."""
    plan = exchange_plan(fleet, PlanSpec(waves=(1, "100%"), bake="100ms"))
    plan["vars"]["api_token"] = {"value": VALUE_SECRET, "secret": True}
    plan["vars"]["db_password"] = {"env": ENV_NAME, "secret": True}
    plan["steps"].append(
        {"name": "use-secrets", "run": ECHO_SECRETS, "rollback": "echo undoing with {{ db_password }} {{ api_token }}"}
    )
    if fail:
        plan["steps"].append(
            {
                "name": "fail-loudly",
                "run": "echo 'cannot log in as {{ api_token }}' && echo 'bad password {{ db_password }}' >&2 && exit 7",
                "rollback": "none",
            }
        )
    plan["notify"] = [
        {
            "webhook": {
                "url": f"{hook.url}?key={{{{ api_token }}}}",
                "headers": {"Authorization": "Bearer {{ db_password }}", "X-Token": "{{ api_token }}"},
                "timeout": "2s",
            }
        },
        {"file": {"path": str(tmp_path / "status.jsonl")}},
    ]
    return write_plan(tmp_path / "plan.yaml", plan)


def _run_and_collect(tmp_path: Path, hook: Webhook, *, fail: bool) -> dict[str, str]:
    """Run for real; return every text a secret must not reach, by where it came from."""
    state = tmp_path / "state"
    received_before = len(hook.requests)
    with running_fleet(tmp_path / "fleet", 2) as fleet:
        plan = secret_plan(tmp_path, fleet, hook, fail=fail)
        result = rollout(*run_args(plan, state), env=cli_env(**{ENV_NAME: ENV_SECRET}))
    assert result.returncode == (1 if fail else 0), result.stdout + result.stderr
    texts = {"cli stdout": result.stdout, "cli stderr": result.stderr}
    for fmt in ("md", "json", "html"):
        report = rollout("report", "last", "--state-dir", state, "--format", fmt)
        assert report.returncode == 0, report.stderr
        texts[f"report.{fmt}"] = report.stdout
    requests = hook.requests[received_before:]
    assert requests, "the webhook received nothing"
    for i, request in enumerate(requests):
        texts[f"notification body {i}"] = request["body"]
        # the secrets reach the status page's endpoint, where they belong, and nowhere else
        assert request["headers"]["Authorization"] == f"Bearer {ENV_SECRET}"
        assert request["path"].endswith(f"?key={VALUE_SECRET}")
    texts["status.jsonl"] = (tmp_path / "status.jsonl").read_text()
    for path in sorted(state.rglob("*")):
        if path.is_file():
            texts[str(path.relative_to(state))] = path.read_bytes().decode("utf-8", "replace")
    return texts


def _assert_private(state: Path) -> None:
    for path in [state / "runs", *(state / "runs").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


@pytest.mark.parametrize("fail", [False, True], ids=["succeeded", "rolled-back"])
def test_secrets_appear_nowhere_a_run_writes_or_sends(tmp_path: Path, webhook: Webhook, fail: bool) -> None:
    texts = _run_and_collect(tmp_path, webhook, fail=fail)
    journal = next(text for where, text in texts.items() if where.endswith("journal.jsonl"))
    assert "***" in journal  # the step really printed them: they were redacted, not absent
    assert "notify.delivery" in journal
    found = {where: leaks(text) for where, text in texts.items() if leaks(text)}
    # The one exception: the byte-exact plan copy (owner-only) that the digest is checked
    # against holds the `value:` secret because the operator's plan file does. The `env:`
    # secret is in no file at all.
    plan_copies = {where for where in found if where.split("/")[2:3] == ["plan"]}
    assert {where: hits for where, hits in found.items() if where not in plan_copies} == {}
    assert all(leaks(texts[where], forms(ENV_SECRET)) == [] for where in plan_copies)
    _assert_private(tmp_path / "state")


def test_status_notifications_carry_the_journal_head_and_verify_checks_it(tmp_path: Path, webhook: Webhook) -> None:
    _run_and_collect(tmp_path, webhook, fail=True)
    docs = [json.loads(line) for line in (tmp_path / "status.jsonl").read_text().splitlines()]
    assert docs
    assert all(re.fullmatch(r"\d+:[0-9a-f]{64}", d["journal_head"]) for d in docs)
    result = rollout("verify", "last", "--state-dir", tmp_path / "state", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert any(a.startswith("status notification in ") for a in data["anchors_checked"]), data
    # a cut that keeps head file and report consistent is still caught by the status page's copy
    journal = next((tmp_path / "state" / "runs").iterdir()) / "journal.jsonl"
    newest = max(int(d["journal_head"].split(":")[0]) for d in docs)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[: newest - 1]))
    (journal.parent / "head").unlink()
    (journal.parent / "report.md").unlink()
    result = rollout("verify", "last", "--state-dir", tmp_path / "state", "--json")
    assert result.returncode == 5, result.stdout
    assert json.loads(result.stdout)["anchor"].startswith("status notification in ")
