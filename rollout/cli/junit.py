"""JUnit XML for CI systems: one testsuite, a testcase per thing checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.atomic import write_atomic
from rollout.errors import UsageError


@dataclass(frozen=True)
class Case:
    """One testcase: a name, its class (the file) and the failure text, if any."""

    name: str
    classname: str
    failure: str | None = None
    time: float = 0.0
    skipped: str | None = None  # why it never ran (CI shows it as skipped, neither passed nor failed)
    output: str | None = None  # shown as the case's system-out


def write_junit(path: Path, suite: str, cases: list[Case]) -> None:
    """Write the cases as a JUnit XML file that CI systems read."""
    import xml.etree.ElementTree as ET  # only with --junit: validate imports this module on every start

    failures = sum(1 for c in cases if c.failure is not None)
    skipped = sum(1 for c in cases if c.failure is None and c.skipped is not None)
    root = ET.Element("testsuites", name="rollout", tests=str(len(cases)), failures=str(failures))
    node = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0", skipped=str(skipped)
    )
    for case in cases:
        tc = ET.SubElement(node, "testcase", name=case.name, classname=case.classname, time=f"{case.time:.3f}")
        if case.failure is not None:
            first = case.failure.splitlines()[0] if case.failure else "failed"
            fail = ET.SubElement(tc, "failure", message=first, type="rollout")
            fail.text = case.failure
        elif case.skipped is not None:
            ET.SubElement(tc, "skipped", message=case.skipped)
        if case.output is not None:
            ET.SubElement(tc, "system-out").text = case.output
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    try:
        # CI systems read it as another user: not private, unlike the run's evidence
        write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the JUnit report: {exc.strerror}") from exc
