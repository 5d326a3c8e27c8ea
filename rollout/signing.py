"""Signing a run's final journal head with an SSH key, in OpenSSH's sshsig format.

The signed message is the run directory's `head` file (run id, last line number, its
hash, closed): whoever holds the allowed-signers file can check it with the stock tool,

    ssh-keygen -Y verify -f allowed_signers -I PRINCIPAL -n rollout-journal-head \\
        -s head.sig < head

and `rollout verify --allowed-signers FILE` does the same. The signing and checking is
done by `ssh-keygen` (openssh-client) rather than reimplemented here: it is the reference
implementation of the format and already handles every key type and agent. This module
never signs or accepts anything but the head file's exact bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from rollout.errors import JournalError, UsageError

NAMESPACE = "rollout-journal-head"
SIGNATURE_SUFFIX = ".sig"
TOOL_TIMEOUT = 30.0


def _ssh_keygen() -> str:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise UsageError(
            "ssh-keygen was not found on PATH: signing and checking journal heads needs OpenSSH's "
            "ssh-keygen (install openssh-client)"
        )
    return tool


def signature_path(head: Path) -> Path:
    """Where the signature of a head file is kept (`head.sig`)."""
    return head.with_name(head.name + SIGNATURE_SUFFIX)


def sign_head(head: Path, key: Path) -> Path:
    """Sign the head file with a private SSH key; return the signature's path."""
    tool = _ssh_keygen()
    if not key.is_file():
        raise UsageError(f"signing key {key} does not exist or is not a file")
    sig = signature_path(head)
    sig.unlink(missing_ok=True)  # ssh-keygen refuses to overwrite; a stale one must not stay
    try:
        done = subprocess.run(
            [tool, "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(head)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JournalError(f"cannot sign {head} with {key}: {exc}") from exc
    if done.returncode != 0 or not sig.is_file():
        raise JournalError(f"cannot sign {head} with {key}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return sig


def verify_head_signature(head: Path, allowed_signers: Path) -> str:
    """Check head.sig over the head file against an allowed-signers file; the signer, or JournalError."""
    tool = _ssh_keygen()
    sig = signature_path(head)
    if not allowed_signers.is_file():
        raise UsageError(f"allowed-signers file {allowed_signers} does not exist")
    if not sig.is_file():
        raise JournalError(f"{sig} is missing: the head was not signed (or the signature was removed)")
    found = _run(tool, ["-Y", "find-principals", "-f", str(allowed_signers), "-s", str(sig)], stdin=None)
    principal = found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None
    if principal is None:
        raise JournalError(f"{sig} is not signed by any key in {allowed_signers}")
    try:
        data = head.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read {head}: {exc.strerror or exc}") from exc
    checked = _run(
        tool,
        ["-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE, "-s", str(sig)],
        stdin=data,
    )
    if checked.returncode != 0:
        why = (checked.stderr or checked.stdout).strip().splitlines()
        raise JournalError(f"the signature {sig} does not match {head}: {why[-1] if why else 'rejected'}")
    return principal


def _run(tool: str, args: list[str], *, stdin: bytes | None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            [tool, *args],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JournalError(f"ssh-keygen failed: {exc}") from exc
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
