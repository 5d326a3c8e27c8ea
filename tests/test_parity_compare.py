"""The parity comparison (pure), table-driven and on random readings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rollout.checks.parity import FactReading, compare_fact, compare_parity

HOSTS = ("h1", "h2", "h3")
values = st.sampled_from(["1.4.2", "1.4.3", "x"])
readings_of_one_value = st.builds(
    lambda v, n: FactReading(dict.fromkeys(HOSTS[:n], v)), values, st.integers(min_value=1, max_value=3)
)


def _same(value: str, *hosts: str, **kw: object) -> FactReading:
    return FactReading(dict.fromkeys(hosts, value), **kw)  # type: ignore[arg-type]


def test_equal_values_everywhere_match() -> None:
    result = compare_fact("build", {"demo": _same("1.4.2", "a", "b"), "production": _same("1.4.2", "c")})

    assert not result.drift
    assert result.values == {"demo": {"1.4.2": ("a", "b")}, "production": {"1.4.2": ("c",)}}


def test_different_values_between_environments_drift_naming_both() -> None:
    result = compare_fact("build", {"demo": _same("1.4.2", "a"), "production": _same("1.5.0", "c")})

    assert result.drift
    assert result.reasons == ("environments differ: demo '1.4.2'; production '1.5.0'",)


def test_hosts_of_one_environment_that_disagree_drift_by_themselves() -> None:
    production = FactReading({"c": "1.4.2", "d": "1.4.3"})

    result = compare_fact("build", {"demo": _same("1.4.2", "a"), "production": production})

    assert result.drift
    assert result.reasons[0] == "hosts of production disagree: '1.4.2' (c), '1.4.3' (d)"


def test_the_same_disagreement_on_both_sides_is_still_drift() -> None:
    split = FactReading({"a": "1", "b": "2"})

    assert compare_fact("build", {"demo": split, "production": split}).drift


def test_an_error_is_never_a_match_even_when_every_value_agrees() -> None:
    production = FactReading({"c": "1.4.2"}, errors={"d": "`cat x` exited 1"})

    result = compare_fact("build", {"demo": _same("1.4.2", "a"), "production": production})

    assert result.drift
    assert "production/d: could not be gathered: `cat x` exited 1" in result.reasons


def test_expect_differ_never_drifts_on_values_but_does_on_errors() -> None:
    demo = FactReading({"a": "host-a", "b": "host-b"}, mode="differ")
    production = FactReading({"c": "host-c"}, mode="differ")

    assert not compare_fact("hostname", {"demo": demo, "production": production}).drift
    broken = FactReading({}, errors={"c": "timed out"}, mode="differ")
    assert compare_fact("hostname", {"demo": demo, "production": broken}).drift


def test_template_compares_each_host_with_its_own_rendering() -> None:
    demo = FactReading({"a": "db.demo"}, mode="template", template="db.{{ env }}", expected={"a": "db.demo"})
    good = FactReading(
        {"c": "db.production"}, mode="template", template="db.{{ env }}", expected={"c": "db.production"}
    )
    bad = FactReading({"c": "db.demo"}, mode="template", template="db.{{ env }}", expected={"c": "db.production"})

    assert not compare_fact("db", {"demo": demo, "production": good}).drift
    result = compare_fact("db", {"demo": demo, "production": bad})
    assert result.reasons == ("production/c: 'db.demo', the template wants 'db.production'",)


def test_a_fact_missing_from_one_environment_drifts() -> None:
    result = compare_parity({"demo": {"build": _same("1", "a")}, "production": {}})

    assert result.drift
    assert result.facts[0].reasons == ("production: not gathered",)


def test_journal_entries_read_back_to_the_same_comparison() -> None:
    reading = FactReading({"a": "1"}, errors={"b": "no"}, mode="differ")

    again = FactReading.from_journal(reading.to_journal())

    assert again == reading
    assert reading.to_journal() == {"values": {"a": "1"}, "errors": {"b": "no"}, "expect": "differ", "template": None}


@given(readings_of_one_value)
def test_identical_readings_without_errors_always_match(reading: FactReading) -> None:
    assert not compare_fact("f", {"demo": reading, "production": reading, "staging": reading}).drift


@given(readings_of_one_value, readings_of_one_value)
def test_single_valued_environments_match_exactly_when_their_values_are_equal(a: FactReading, b: FactReading) -> None:
    result = compare_fact("f", {"demo": a, "production": b})

    assert result.drift == (set(a.values.values()) != set(b.values.values()))


@given(
    st.dictionaries(st.sampled_from(HOSTS), values, min_size=1),
    st.dictionaries(st.sampled_from(HOSTS), values, min_size=1),
    st.sampled_from(["equal", "differ"]),
)
def test_the_verdict_does_not_depend_on_the_order_of_environments(
    a: dict[str, str], b: dict[str, str], mode: str
) -> None:
    ra, rb = FactReading(a, mode=mode), FactReading(b, mode=mode)

    assert compare_fact("f", {"x": ra, "y": rb}).drift == compare_fact("f", {"y": rb, "x": ra}).drift


@given(
    st.dictionaries(st.sampled_from(HOSTS), values),
    st.dictionaries(st.sampled_from(HOSTS), st.text(min_size=1), min_size=1),
    st.sampled_from(["equal", "differ", "template"]),
)
def test_any_error_means_drift_whatever_the_mode(values_: dict[str, str], errors: dict[str, str], mode: str) -> None:
    reading = FactReading(values_, errors=errors, mode=mode, expected=dict(values_))

    assert compare_fact("f", {"demo": reading, "production": reading}).drift
