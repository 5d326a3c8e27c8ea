"""The incident report: golden Markdown for a recorded rolled-back run, HTML, JSON, and real runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rollout.journal import read_journal
from rollout.report.html import render_html, render_svg
from rollout.report.incident import (
    NO_IMPACT,
    IncidentReport,
    build_report,
    render_json,
    render_markdown,
    report_from_dict,
)
from tests.helpers import PlanSpec, rollout, run_args, running_fleet, write_exchange_plan

GOLDEN = Path(__file__).parent / "golden" / "rolled-back"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def golden() -> IncidentReport:
    reading = read_journal(GOLDEN / "journal.jsonl")
    assert reading.run_id is not None
    return build_report(reading.records, run_id=reading.run_id)


def test_markdown_report_of_the_recorded_rolled_back_run_matches_the_golden_file(golden: IncidentReport) -> None:
    assert render_markdown(golden) == (GOLDEN / "report.md").read_text("utf-8")


def test_report_is_deterministic_given_the_journal(golden: IncidentReport) -> None:
    reading = read_journal(GOLDEN / "journal.jsonl")
    again = build_report(reading.records, run_id="ignored-when-the-journal-names-its-run")
    assert render_markdown(again) == render_markdown(golden)
    assert render_json(again) == render_json(golden)
    assert render_html(again) == render_html(golden)


def test_impact_window_runs_from_first_failing_probe_to_guards_green(golden: IncidentReport) -> None:
    records = read_journal(GOLDEN / "journal.jsonl").records
    first_failing = next(r for r in records if r.kind == "guard.state" and r.outcome == "failing")
    rollback_end = next(r for r in records if r.kind == "rollback.end")
    green_after = next(
        r for r in records if r.kind == "guard.state" and r.outcome == "green" and r.seq > rollback_end.seq
    )
    impact = golden.impact
    assert impact is not None
    assert (impact.begins, impact.mitigated, impact.ends) == (first_failing.ts, rollback_end.ts, green_after.ts)
    assert impact.hosts == ["gw-1"]
    assert impact.checks == ["order flow"]
    assert impact.detection_seconds is not None
    assert 0 < impact.detection_seconds < 5
    markers = [e.text.split(":")[0] for e in golden.timeline if e.marker]
    assert markers == ["OUTAGE BEGINS", "MITIGATED", "ENDS"]
    assert {e.phase for e in golden.timeline} == {"pre-checks", "waves", "bake", "abort", "rollback", "recovery"}


def test_report_names_what_failed_first_and_what_was_undone(golden: IncidentReport) -> None:
    failure = golden.first_failure
    assert failure is not None
    assert (failure.kind, failure.host, failure.check) == ("guard", "gw-1", "order flow")
    assert any("ZeroDivisionError" in line for line in failure.output_tail)
    assert golden.rollback is not None
    assert [(a.host, a.step, a.outcome) for a in golden.rollback.actions] == [
        ("gw-1", "activate-release", "ok"),
        ("gw-1", "stage-release", "ok"),
    ]
    assert golden.rollback.remaining == {}
    assert golden.evidence.journal_head == read_journal(GOLDEN / "journal.jsonl").head
    head = read_journal(GOLDEN / "journal.jsonl")
    # the command carries the head, so running it from a copy of the report checks for a cut tail
    assert (
        golden.evidence.verify_command
        == f"rollout verify {golden.summary.run_id} --head {len(head.records)}:{head.head}"
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)


def test_html_report_is_self_contained_with_one_lane_per_host_and_the_impact_window(golden: IncidentReport) -> None:
    page = render_html(golden)
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "link" not in parser.tags
    assert parser.external == []
    svg = ET.fromstring(render_svg(golden))
    lanes = [g.get("data-host") for g in svg.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert lanes == golden.summary.hosts == ["gw-1", "gw-2", "gw-3"]
    windows = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "impact-window"]
    assert len(windows) == 1
    assert float(windows[0].get("width", "0")) > 0
    classes = [r.get("class", "") for r in svg.iter(f"{SVG}rect")]
    assert "bar step ok" in classes
    assert "bar rollback ok" in classes
    assert any(c.startswith("guard tripped") for c in classes)
    assert render_svg(golden) in page


def test_html_escapes_text_from_the_journal(golden: IncidentReport) -> None:
    from dataclasses import replace

    hostile = replace(golden, summary=replace(golden.summary, plan="<script>alert(1)</script>", hosts=["<b>x</b>"]))
    page = render_html(hostile)
    assert "<script>" not in page
    assert "<b>x</b>" not in page
    assert "&lt;script&gt;" in page
    ET.fromstring(render_svg(hostile))  # still well-formed


def test_json_report_round_trips(golden: IncidentReport) -> None:
    data = json.loads(render_json(golden))
    assert data["impact"]["hosts"] == ["gw-1"]
    assert report_from_dict(data) == golden


def test_successful_run_writes_a_report_saying_no_impact(tmp_path: Path) -> None:
    with running_fleet(tmp_path / "fleet", 2) as fleet:
        plan = write_exchange_plan(tmp_path, fleet, PlanSpec(waves=(1, "100%"), bake="100ms"))
        result = rollout(*run_args(plan, tmp_path / "state"))
    assert result.returncode == 0, result.stdout + result.stderr
    run = next((tmp_path / "state" / "runs").iterdir())
    written = (run / "report.md").read_text("utf-8")
    assert (run / "report.md").stat().st_mode & 0o777 == 0o600
    assert NO_IMPACT.capitalize() in written
    assert "**succeeded**" in written
    shown = rollout("report", "last", "--state-dir", tmp_path / "state")
    assert shown.returncode == 0
    assert shown.stdout == written
    as_json = rollout("report", run.name[:10], "--state-dir", tmp_path / "state", "--format", "json")
    assert json.loads(as_json.stdout)["impact"] is None
    out = tmp_path / "report.html"
    as_html = rollout("report", "last", "--state-dir", tmp_path / "state", "-f", "html", "-o", out)
    assert as_html.returncode == 0
    assert NO_IMPACT.capitalize() in out.read_text("utf-8")
    assert out.stat().st_mode & 0o777 == 0o600


def test_report_of_an_unknown_run_is_a_usage_error(tmp_path: Path) -> None:
    result = rollout("report", "nope", "--state-dir", tmp_path)
    assert result.returncode == 2
    assert "no run 'nope'" in result.stderr
