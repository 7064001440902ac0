"""`sqlwarden replay LOG --html OUT`: the swimlane page of a real engine's log, in headless
Chromium and without a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from sqlwarden.config import parse_config
from sqlwarden.errors import EngineError
from sqlwarden.facade import Engine
from sqlwarden.replay import html as replayhtml
from sqlwarden.replay.html import write_html
from sqlwarden.replay.read import Filter, log_files

from .conftest import GENERATOR_TABLES, LAST_SEEN_TASK
from .support import chromium

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "var/test-artifacts"
#: What a field of the log carries that must stay text on the page.
HOSTILE = "</script><b>x"

#: A generator source big enough to defer FTS upkeep (threshold_rows is low) and a
#: chunked task with small chunks, so the log holds every kind of span but the mirror's.
CONFIG = """\
database:
  path: {data}/replay.db
tables:
{generator_tables}    indexes:
      - [registry_id, observed_at]
tasks:
{last_seen_task}    version: 1
    min_rows: 100
    max_rows: 100
    yield_ms: 0
sources:
  demo:
    kind: generator
    registry_table: registry
    observations_table: observations
    registry_rows: 800
    observation_rows: 2400
    batch_rows: 400
    seed: 7
fts_deferral:
  threshold_rows: 100
message_log:
  path: {data}/messages.jsonl
  payload: {payload}
"""


def run_engine(base: Path, payload: str = "summary") -> Path:
    """Sync the source, run the task, write one hostile row and fail one write; the log."""
    data = base / "data"
    text = CONFIG.format(generator_tables=GENERATOR_TABLES, last_seen_task=LAST_SEEN_TASK,
                         data=data, payload=payload)
    config = parse_config(text, file="replay.yaml", base_dir=base)
    with Engine(config, start_tasks=False) as engine:
        assert engine.sync.run("demo", timeout=60).status == "ok"
        engine.tasks.start()
        assert [view.status for view in engine.tasks.wait(timeout=60)] == ["done"]
        engine.write("INSERT INTO registry (id, org, name, updated_at) "
                     f"VALUES (100001, 'acme', '{HOSTILE}', '2025-01-01T00:00:00Z')")
        with pytest.raises(EngineError):
            engine.write("INSERT INTO no_such_table VALUES (1)")
    return data / "messages.jsonl"


def records(log: Path) -> list[dict[str, Any]]:
    """The log's records, read without the code under test."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def actors(log: Path) -> set[str]:
    return {r["sender"] for r in records(log)} | {r["receiver"] for r in records(log)}


def span_kinds(log: Path) -> set[str]:
    """The kinds of span the log has the makings of."""
    kinds = set()
    for r in records(log):
        message, answer = r["message"], r["kind"] in ("reply", "error")
        if message == "writer.chunk" and answer:
            kinds.add("chunk")
        elif message == "writer.task_state":
            kinds.add("task")
        elif message == "writer.fts_defer" and r["kind"] == "reply" and "sources" in r["fields"]:
            kinds.add("fts")
        elif message == "mirror.reconcile_begun":
            kinds.add("mirror")
        elif message == "writer.sync_start":
            kinds.add("sync")
    return kinds


def page_data(page: Path) -> tuple[list[Any], dict[str, Any]]:
    """The items (marks and spans) and the meta the page's script draws from."""
    text = page.read_text()
    found = {}
    for name in ("sw-data", "sw-meta"):
        match = re.search(rf'<script type="application/json" id="{name}">(.*?)</script>', text,
                          re.DOTALL)
        assert match is not None, name
        found[name] = json.loads(match[1])
    return found["sw-data"], found["sw-meta"]


def spans_of(items: list[Any], meta: dict[str, Any], kind: str) -> list[list[Any]]:
    return [it for it in items if it[0] == 1 and meta["spanKinds"][it[1]] == kind]


@dataclass(frozen=True)
class Written:
    log: Path
    page: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    base = tmp_path_factory.mktemp("replay-html")
    log = run_engine(base)
    page = base / "timeline.html"
    result = subprocess.run([sys.executable, "-m", "sqlwarden", "replay", str(log), "--html",
                             str(page)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return Written(log, page, result)


# --- without a browser ---------------------------------------------------------------------


def test_the_command_writes_the_page_and_prints_one_line_of_counts(written: Written) -> None:
    n = len(records(written.log))
    items, _ = page_data(written.page)
    spans = sum(1 for it in items if it[0] == 1)
    assert written.result.stdout == (f"wrote {written.page}: {n:,} records, "
                                     f"{len(actors(written.log))} lanes, {n:,} marks, "
                                     f"{spans:,} spans\n")


def test_the_page_loads_nothing_from_the_network(written: Written) -> None:
    text = written.page.read_text()
    assert "http://" not in text and "https://" not in text
    assert re.search(r"\b(src|href)\s*=", text) is None
    assert re.search(r"url\((?!#)|@import", text) is None


def test_text_from_the_log_cannot_break_out_of_the_page(written: Written) -> None:
    assert HOSTILE in written.log.read_text()
    text = written.page.read_text()
    assert HOSTILE not in text
    assert text.count("<script") == text.count("</script>") == 3
    items, _ = page_data(written.page)
    assert any(HOSTILE in it[1][9] for it in items if it[0] == 0)


def test_a_torn_last_line_still_gives_a_page_and_is_counted(written: Written,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "messages.jsonl"
    shutil.copy(written.log, log)
    with open(log, "a") as handle:
        handle.write('{"seq": 99999, "ts": "2026-11-21T06:')  # the crash came mid-line
    report = write_html(log_files([log]), tmp_path / "torn.html", Filter())
    assert report.damaged == 1 and report.records == len(records(written.log))
    assert report.line().endswith("; 1 damaged line skipped")
    assert (tmp_path / "torn.html").read_text().rstrip().endswith("</html>")


def test_a_filter_narrows_the_marks_and_lanes(written: Written, tmp_path: Path) -> None:
    report = write_html(log_files([written.log]), tmp_path / "chunks.html",
                        Filter(kinds=frozenset({"writer.chunk"})))
    chunks = [r for r in records(written.log) if r["message"] == "writer.chunk"]
    assert (report.records, report.marks, report.lanes) == (len(chunks), len(chunks), 2)
    _, meta = page_data(tmp_path / "chunks.html")
    assert sorted(meta["lanes"]) == ["backfill", "writer"]


def test_past_the_caps_marks_are_sampled_but_errors_kept_and_chunk_spans_merged(
        written: Written, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replayhtml, "MARK_CAP", 40)
    monkeypatch.setattr(replayhtml, "SPAN_CAP", 3)
    report = write_html(log_files([written.log]), tmp_path / "capped.html", Filter())
    items, meta = page_data(tmp_path / "capped.html")
    marks = [it[1] for it in items if it[0] == 0]
    errors = [r for r in records(written.log) if r["kind"] == "error"]
    assert report.every > 1 and len(marks) == report.marks <= 40 + len(errors)
    assert {m[4] for m in marks if m[3] == 3} == {r["seq"] for r in errors}
    chunks = spans_of(items, meta, "chunk")
    assert len(chunks) <= 3 and sum(c[7] for c in chunks) == sum(
        1 for r in records(written.log) if r["message"] == "writer.chunk" and r["kind"] == "ask")


@pytest.mark.parametrize("payload", ["summary", "full"])
def test_a_task_run_ends_when_its_terminal_state_is_saved(payload: str, tmp_path: Path) -> None:
    log = run_engine(tmp_path, payload)
    write_html(log_files([log]), tmp_path / "page.html", Filter())
    items, meta = page_data(tmp_path / "page.html")
    (task,) = spans_of(items, meta, "task")
    assert task[5] == "last_seen@1: done" and meta["states"][task[6]] == "ok"
    closed_by = task[9]
    assert meta["names"][closed_by[5]] == "writer.task_state" and closed_by[3] == 2
    (fts,) = spans_of(items, meta, "fts")
    assert meta["states"][fts[6]] == "ok" and "restored" in fts[5]


def test_a_deferral_still_in_effect_at_the_end_is_drawn_to_the_end(written: Written,
                                                                   tmp_path: Path) -> None:
    # The run's end cut short after the deferral was persisted: no restore in the log.
    lines = written.log.read_text().splitlines(keepends=True)
    restore = next(i for i, line in enumerate(lines) if '"writer.fts_restore"' in line)
    log = tmp_path / "messages.jsonl"
    log.write_text("".join(lines[:restore]))
    write_html(log_files([log]), tmp_path / "page.html", Filter())
    items, meta = page_data(tmp_path / "page.html")
    (fts,) = spans_of(items, meta, "fts")
    assert (fts[5], meta["states"][fts[6]], fts[4]) == ("deferred (persisted)", "open",
                                                       meta["t1"])


# --- in headless Chromium ------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    reason = chromium.available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with chromium.headless() as browser:
        yield browser


@pytest.fixture
def browser(driver: WebDriver, written: Written) -> WebDriver:
    """The page freshly loaded, with its script done drawing."""
    driver.get(written.page.as_uri())
    WebDriverWait(driver, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#chart[data-t0] .mark"))
    return driver


def visible(browser: WebDriver) -> tuple[float, float]:
    """The time range shown, in ms since the first record, as the chart exposes it."""
    chart = browser.find_element(By.ID, "chart")
    return float(chart.get_attribute("data-t0") or 0), float(chart.get_attribute("data-t1") or 0)


def visible_range_ms(browser: WebDriver) -> float:
    start, end = visible(browser)
    return end - start


def uncovered(browser: WebDriver, selector: str) -> WebElement:
    """The first element matching `selector` that is on top at its own centre."""
    found = browser.execute_script("""
        return Array.from(document.querySelectorAll(arguments[0])).find(function (node) {
          var box = node.getBoundingClientRect();
          return document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2)
            === node;
        }) || null;""", selector)
    assert isinstance(found, WebElement), f"no uncovered {selector}"
    return found


def test_there_is_one_lane_per_actor_of_the_log(browser: WebDriver, written: Written) -> None:
    lanes = browser.find_elements(By.CSS_SELECTOR, ".lane")
    assert len(lanes) == len(actors(written.log))
    assert {lane.get_attribute("data-actor") for lane in lanes} == actors(written.log)


def test_every_kind_of_span_the_run_produced_is_drawn(browser: WebDriver,
                                                      written: Written) -> None:
    kinds = span_kinds(written.log)
    assert kinds >= {"chunk", "task", "fts", "sync"}
    for kind in kinds:
        assert browser.find_elements(By.CSS_SELECTOR, f".span[data-kind='{kind}']"), kind


def test_hovering_a_mark_shows_a_card_with_its_seq(browser: WebDriver) -> None:
    mark = uncovered(browser, ".mark")
    seq = mark.get_attribute("data-seq")
    card = browser.find_element(By.ID, "card")
    assert not card.is_displayed()
    ActionChains(browser).move_to_element(mark).perform()
    WebDriverWait(browser, 5).until(lambda _: card.is_displayed())
    assert re.search(rf"^seq\s*\n?{seq}$", card.text, re.MULTILINE), card.text


def test_an_error_mark_stands_out_and_its_card_names_the_error(browser: WebDriver) -> None:
    mark = uncovered(browser, ".mark.error")
    assert mark.get_attribute("r") == "5"
    ActionChains(browser).move_to_element(mark).perform()
    card = browser.find_element(By.ID, "card")
    WebDriverWait(browser, 5).until(lambda _: card.is_displayed())
    assert "no such table: no_such_table" in card.text


def test_log_text_stays_text_in_the_browser(browser: WebDriver) -> None:
    assert browser.find_elements(By.TAG_NAME, "b") == []


def test_zooming_in_narrows_the_visible_time_range(browser: WebDriver) -> None:
    before = visible_range_ms(browser)
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".axis .tick")]
    browser.find_element(By.ID, "zoom-in").click()
    WebDriverWait(browser, 5).until(lambda b: visible_range_ms(b) < before)
    assert visible_range_ms(browser) == pytest.approx(before / 2, rel=0.01)
    WebDriverWait(browser, 5).until(
        lambda b: [t.text for t in b.find_elements(By.CSS_SELECTOR, ".axis .tick")] != labels)
    browser.find_element(By.ID, "zoom-reset").click()
    WebDriverWait(browser, 5).until(lambda b: visible_range_ms(b) == pytest.approx(before))


def test_the_wheel_zooms_around_the_pointer(browser: WebDriver) -> None:
    (a, b) = visible(browser)
    chart = browser.find_element(By.ID, "chart")
    # Well right of the middle: the time under the pointer stays where it is.
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(chart, 400, 0), 0,
                                             -300).perform()
    WebDriverWait(browser, 5).until(lambda br: visible_range_ms(br) < b - a)
    (c, d) = visible(browser)
    fixed = (c - a) / ((b - a) - (d - c))  # where in the range the zoom's fixed point is
    assert 0.65 < fixed < 0.95


def test_dragging_pans_without_zooming(browser: WebDriver) -> None:
    (a, b) = visible(browser)
    chart = browser.find_element(By.ID, "chart")
    ActionChains(browser).move_to_element_with_offset(chart, -200, 0).click_and_hold() \
        .move_by_offset(300, 0).release().perform()
    WebDriverWait(browser, 5).until(lambda br: visible(br)[0] < a)
    (c, d) = visible(browser)
    assert d - c == pytest.approx(b - a, rel=1e-3)


def test_a_screenshot_of_the_timeline_is_saved(browser: WebDriver) -> None:
    task = browser.find_element(By.CSS_SELECTOR, ".span[data-kind='task']")
    ActionChains(browser).move_to_element(task).perform()
    card = browser.find_element(By.ID, "card")
    WebDriverWait(browser, 5).until(lambda _: card.is_displayed())
    assert "last_seen@1: done" in card.text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "replay-timeline.png"
    shot.unlink(missing_ok=True)
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")
