"""The dashboard in a real headless Chromium: rendered cells, a click through to the detail, a screenshot."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy.orm import Session

from api.app import create_app
from store.models import Environment
from store.settings import Settings

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Also keep the screenshot here when set, e.g. KNOWNGOOD_DASHBOARD_SCREENSHOT=/tmp/kg/dashboard.png.
SCREENSHOT_ENV = "KNOWNGOOD_DASHBOARD_SCREENSHOT"


@pytest.fixture
def recorded(session: Session, make_run: Callable, make_environment: Callable, make_case: Callable) -> dict:
    """torch 2.3–2.5 × tensorflow 2.16 / tensorflow-cpu 2.17, three models on onnxruntime, and one conflict."""
    run = make_run()
    envs = {
        "a": make_environment({"torch": "2.3.1", "onnx": "1.16.0", "onnxruntime": "1.18.0", "tensorflow": "2.16.2"}),
        "b": make_environment({"torch": "2.4.1", "onnx": "1.16.2", "onnxruntime": "1.19.2",
                               "tensorflow-cpu": "2.17.0"}),
        "c": make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0",
                               "tensorflow-cpu": "2.17.0"}),
        "d": make_environment({"torch": "2.5.1", "onnx": "1.17.0", "onnxruntime": "1.20.0",
                               "tensorflow": "2.16.2"}),
    }
    for env in envs.values():
        make_case(run, env, "resnet", "onnxruntime", max_abs_diff=2e-6)
        make_case(run, env, "transformer", "onnxruntime", max_abs_diff=4e-6)
    make_case(run, envs["a"], "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    make_case(run, envs["b"], "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="ParityExceeded(input=1)")
    make_case(run, envs["c"], "grid_sample", "onnxruntime", max_abs_diff=3e-6)
    make_case(run, envs["d"], "grid_sample", "onnxruntime", status="fail", max_abs_diff=None,
              signature="UnsupportedOperator(aten::grid_sampler)")
    conflict = Environment(
        hash="c" * 64, name="py3.11-torch2.2.2-tf2.17.0", python="3.11", requirements=["torch==2.2.2",
        "tensorflow==2.17.0", "onnxruntime"], excludes=[], index_url="https://pypi.org/simple", cutoff="2026-11-01",
        status="conflict", error="Because tensorflow==2.17.0 depends on numpy>=1.26 …",
        signature="ResolutionConflict(numpy)", memory={},
    )
    session.add(conflict)
    session.commit()
    return {"run": run, **envs, "conflict": conflict}


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(Settings(database_url=db_url)), host="127.0.0.1", port=port,
                            log_level="warning", ws="none", http="h11", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("headless Chromium not found: apt-get install -y chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="knowngood-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _cells(driver: WebDriver) -> dict[tuple[str, str], tuple[str, str]]:
    """(x, y) → (status, text) of every rendered cell, read in one script call so a redraw cannot interleave."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#heatmap td.cell')]"
        ".map((td) => [td.dataset.x, td.dataset.y, td.dataset.status, td.textContent]);"
    )
    return {(x, y): (status, text) for x, y, status, text in rows}


def test_heatmap_click_through_and_screenshot(server: str, browser: WebDriver, recorded: dict,
                                              tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 20)
    browser.get(f"{server}/?route=onnxruntime")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#heatmap td.cell")))

    # torch across, tensorflow and tensorflow-cpu merged down; counts are passed/total cases.
    assert _cells(browser) == {
        ("2.3.1", "2.16.2"): ("mixed", "2/3"),
        ("2.4.1", "2.17.0"): ("mixed", "2/3"),
        ("2.5.1", "2.17.0"): ("pass", "3/3"),
        ("2.5.1", "2.16.2"): ("mixed", "2/3"),
        ("2.2.2", "2.17.0"): ("unresolved", "✕"),
    }
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#heatmap thead th")][1:]
    assert headers == ["2.2.2", "2.3.1", "2.4.1", "2.5.1"]
    rows = [(th.get_attribute("data-y"), th.text) for th in browser.find_elements(By.CSS_SELECTOR, "#heatmap tbody th")]
    assert rows == [("2.17.0", "2.17.0 joint"), ("2.16.2", "2.16.2 joint")]  # newest on top; no target on this route
    failures = browser.find_element(By.ID, "failure-list").text
    assert "UnsupportedOperator(aten::grid_sampler)" in failures and "ResolutionConflict(numpy)" in failures

    # Click a cell: its environment, the failing case expanded with its steps and signature, lockfile links.
    browser.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-x="2.3.1"][data-y="2.16.2"]').click()
    env_box = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#detail .env")))
    assert env_box.get_attribute("data-env") == str(recorded["a"].id)
    assert recorded["a"].name in env_box.find_element(By.TAG_NAME, "h3").text
    failing = env_box.find_element(By.CSS_SELECTOR, "details.case[open]")
    assert "grid_sample" in failing.text and "UnsupportedOperator(aten::grid_sampler)" in failing.text
    assert [td.text for td in failing.find_elements(By.CSS_SELECTOR, "table.steps tbody td:first-child")] == ["export"]
    assert len(env_box.find_elements(By.CSS_SELECTOR, "details.case")) == 3
    links = {a.text: a.get_attribute("href") for a in env_box.find_elements(By.CSS_SELECTOR, "a.lockfile")}
    assert set(links) == {"requirements", "constraints", "pylock", "pyproject"}
    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(screenshot, os.environ[SCREENSHOT_ENV])

    # The unresolved cell says why.
    browser.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-status="unresolved"]').click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "detail"), "ResolutionConflict(numpy)"))

    # Controls: another model set and other axes redraw the grid, and the URL follows.
    browser.find_element(By.CSS_SELECTOR, '#models input[value="grid_sample"]').click()
    wait.until(lambda d: _cells(d).get(("2.5.1", "2.17.0")) == ("pass", "1/1"))
    assert _cells(browser)[("2.3.1", "2.16.2")] == ("fail", "0/1")
    Select(browser.find_element(By.ID, "x")).select_by_value("onnx")
    wait.until(lambda d: ("1.16.0", "2.16.2") in _cells(d))
    assert "x=onnx" in browser.current_url and "models=grid_sample" in browser.current_url

    # The lockfile link serves the stamped lock of that environment.
    browser.get(links["constraints"])
    text = browser.find_element(By.TAG_NAME, "body").text
    assert text.startswith(f"# knowngood lockfile for {recorded['a'].name}") and "torch==2.3.1" in text
    assert recorded["run"].id in text


def test_heatmap_and_failures_name_the_target_and_the_split_chain(server: str, browser: WebDriver,
                                                                  targets_and_split: dict) -> None:
    # The page re-renders as its requests answer: read it in one script call, and let waits retry a stale node.
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(f"{server}/?route=onnx2tf&models=resnet")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#heatmap td.cell")))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#failure-list tbody tr")))
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#heatmap td.cell')].map((td) => [td.dataset.x, td.dataset.target,"
        " td.dataset.kind, td.dataset.status, td.classList.contains('split'), td.textContent]);")
    assert sorted(map(tuple, cells)) == sorted([
        ("2.5.1", "saved_model", "joint", "pass", False, "1/1"), ("2.5.1", "tflite", "joint", "fail", False, "0/1"),
        ("2.5.1", "keras", "joint", "pass", False, "1/1"),
        ("2.6.0", "saved_model", "runtime", "pass", True, "1/1"), ("2.6.0", "tflite", "runtime", "fail", True, "0/1"),
        ("2.7.0", "saved_model", "runtime", "pass", True, "1/1"), ("2.7.0", "tflite", "runtime", "fail", True, "0/1"),
    ])
    # Each row says what it measured: target and kind, the split ones marked as such.
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#heatmap tbody th.row')].map((th) => th.innerText);")
    assert rows == ["2.17.0 keras joint", "2.17.0 saved_model joint", "2.17.0 saved_model split: export → runtime",
                    "2.17.0 tflite joint", "2.17.0 tflite split: export → runtime"]

    # Failures: one row per (target, kind); the split one shows the export side's torch beside the runtime side.
    failures = browser.execute_script(
        "return [...document.querySelectorAll('#failure-list tbody tr')].map((tr) => [tr.dataset.target,"
        " tr.dataset.kind, tr.innerText]);")
    by_kind = {(target, kind): text for target, kind, text in failures}
    assert set(by_kind) == {("tflite", "joint"), ("tflite", "runtime")}
    split = by_kind["tflite", "runtime"]
    assert "split: export → runtime" in split and "2.6.0 – 2.7.0" in split
    assert f"exported in {targets_and_split['export26'].name}: torch 2.6.0" in split
    assert "runtime: onnx 1.17.0 · tensorflow 2.17.0 · onnx2tf 1.26.3" in split
    assert "exported in" not in by_kind["tflite", "joint"]

    # The target selector narrows both views to one target, and the URL follows.
    Select(browser.find_element(By.ID, "target")).select_by_value("tflite")
    wait.until(lambda d: {c.get_attribute("data-target") for c in d.find_elements(By.CSS_SELECTOR, "#heatmap td.cell")}
               == {"tflite"})
    assert "target=tflite" in browser.current_url

    # A split cell's detail names the export environment the runtime side ran the graph of.
    browser.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-x="2.6.0"][data-kind="runtime"]').click()
    box = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#detail .env")))
    assert box.get_attribute("data-env") == str(targets_and_split["runtime"].id)
    assert f"graph exported in {targets_and_split['export26'].name}" in box.text
    assert [d.get_attribute("data-case") for d in box.find_elements(By.CSS_SELECTOR, "details.case")] != []
    assert "tflite" in box.find_element(By.CSS_SELECTOR, "details.case").text
