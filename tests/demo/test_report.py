"""The demo's report never says OK when a check failed or when nothing was checked, and shows
the long tables in the file only."""

from __future__ import annotations

from tests.demo.report import Section, passed, render


def test_one_failed_check_makes_the_verdict_failed_and_is_listed_first() -> None:
    good, bad = Section("good"), Section("bad")
    good.check("held", True)
    bad.check("sent once", False, "2 calls")
    text = render(["header"], [good, bad])
    assert not passed([good, bad])
    assert "**Verdict: FAILED** — 1 of 2 checks held." in text
    assert text.index("- FAILED: sent once (seen: 2 calls)") < text.index("## good")
    assert "- FAIL sent once — 2 calls" in text


def test_no_check_at_all_is_not_ok() -> None:
    empty = Section("nothing ran")
    assert not passed([empty])
    assert "**Verdict: FAILED**" in render([], [empty])


def test_every_check_held() -> None:
    section = Section("scene")
    section.check("a", True)
    section.check("b", True, "seen")
    assert passed([section])
    assert "**Verdict: OK** — 2 of 2 checks held." in render([], [section])


def test_long_tables_go_to_the_file_only_and_a_list_is_closed_before_text() -> None:
    section = Section("scene")
    section.say("- an item")
    section.say("a paragraph")
    section.details("every row (2)", ["a", "b"], [[1, "x|y"], [2, "z"]])
    section.check("a", True)
    full, short = render([], [section]), render([], [section], full=False)
    assert "- an item\n\na paragraph" in full
    assert "<details><summary>every row (2)</summary>" in full
    assert "| 1 | x\\|y |" in full
    assert "<details>" not in short
    assert "(every row (2): in the report file, demo-report.md)" in short
