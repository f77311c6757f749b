"""The release page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven with Selenium) opens the page of a simulated release run with
the field's faults and a slower candidate, and a test checks what a person sees: the drop
markers where the report's events say, the worse figure marked, nothing wider than the
window at 1280 px and at a phone's 390 px. Screenshots go to ``build/`` for a reviewer.

Outside CI the test skips, naming what to install; under ``CI=true`` (or
``SMARTBALL_BROWSER_TEST=required``, as ``.ci/run`` sets) it fails instead.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build"
#: The chromium flags of the brief: no network of its own, no first-run work, no sandbox
#: (CI runs as root).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WIDTHS = {"desktop": 1280, "phone": 390}
#: ``SMARTBALL_BROWSER_TEST=required`` (.ci/run) or ``CI=true``: no browser is a failure.
REQUIRED_ENV = "SMARTBALL_BROWSER_TEST"

#: The candidate's own test: one update under the field's fault profile.
FIELD_TEST = """\
import pytest

pytestmark = pytest.mark.asyncio


@pytest.mark.faults("field-linux")
async def test_an_update_under_the_field_faults(ota):
    result = await ota().run()
    assert result.success, result.error
"""
TIMING_TEST = "hil_tests/test_timing_contract.py"
RESUME_TEST = (
    "hil_tests/test_ota_hil.py::test_host_drops_the_link_mid_transfer_and_the_update_resumes"
)


def _what_is_missing() -> str | None:
    missing = [
        f"{tool} (apt-get install {package})"
        for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"))
        if shutil.which(tool) is None
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _what_is_missing()
    if missing:
        message = f"the release page's browser test needs {missing}"
        if os.environ.get("CI") == "true" or os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        # Nothing of this browser outlives the test: the driver and every chromium process
        # started with this profile are gone.
        process = service.process
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        left = _processes_using(str(profile))
        assert not left, f"chromium processes left running: {left}"


def _processes_using(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def _pytest(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--device=sim",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--rootdir={ROOT}",
            f"-c={ROOT / 'pyproject.toml'}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def release_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The last release (reference flash) and a candidate whose flash erases a page in
    120 ms instead of 85, run with an update under ``field-linux`` and one that resumes
    after the host dropped the link; the candidate writes the page."""
    tmp = tmp_path_factory.mktemp("release")
    previous = tmp / "release-1.4.json"
    first = _pytest(tmp, f"--basetemp={tmp / 'p'}", TIMING_TEST, f"--smartball-report={previous}")
    assert first.returncode == 0, first.stdout + first.stderr
    # Under the rootdir (in the ignored build/), so the page names the test by its path.
    SHOTS.mkdir(parents=True, exist_ok=True)
    field_dir = Path(tempfile.mkdtemp(prefix="release-run-", dir=SHOTS))
    field_test = field_dir / "test_field_update.py"
    field_test.write_text(FIELD_TEST)
    report, page = tmp / "candidate.json", tmp / "release.html"
    try:
        candidate = _pytest(
            tmp,
            f"--basetemp={tmp / 'c'}",
            TIMING_TEST,
            RESUME_TEST,
            str(field_test.relative_to(ROOT)),
            "--sim-flash=erase_page_s=0.12",
            f"--smartball-compare={previous}",
            f"--smartball-report={report}",
            f"--smartball-html={page}",
        )
    finally:
        shutil.rmtree(field_dir)
    # The slower erase fails the run (the compare gate); every test itself passed.
    assert candidate.returncode == 1, candidate.stdout + candidate.stderr
    assert "3 passed" in candidate.stdout, candidate.stdout
    assert "smartball compare: FAILED: erase_s" in candidate.stdout
    data = json.loads(report.read_text())
    # The same run's page from smartball-report, with a kill table of the length
    # tests.gate.kill_table writes (the bug names of the catalogue, long test ids).
    with_kill = tmp / "release-with-kill-table.html"
    from pytest_smartball import contract
    from pytest_smartball.release_report.command import write_page

    tests = [t["test"] for t in data["tests"]] * 3
    kill = {
        "bugs": {
            bug.name: {
                "killed": i != 0,
                "caught_by": tests[: i % 5],
                "caught_on_hardware_too": tests[: i % 3],
            }
            for i, bug in enumerate(contract.firmware_bugs())
        },
        "tests": len(data["tests"]),
        "seconds": 100.0,
    }
    write_page(with_kill, data, kill_table=kill)
    return {"page": page, "report": data, "with_kill_table": with_kill}


def _at_width(driver: Any, width: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def _screenshot(driver: Any, path: Path, width: int) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def _drops(events: list[dict[str, Any]]) -> list[float]:
    """The times the link was lost before the update ended (after its last state change the
    engine closes the link itself)."""
    end = next(
        (
            i
            for i, e in enumerate(events)
            if e["kind"] == "state" and e["detail"].endswith(("succeeded", "failed", "unconfirmed"))
        ),
        len(events),
    )
    return [e["t"] for e in events[:end] if e["kind"] == "link-lost"]


#: The drop markers and the plot area of one update's timeline, as the browser laid them out.
MARKERS_JS = """
const article = [...document.querySelectorAll('article.update')]
  .find(a => a.dataset.test === arguments[0]);
if (!article) return null;
const plot = article.querySelector('svg.timeline rect.plot-area').getBoundingClientRect();
const drops = [...article.querySelectorAll('svg.timeline line.marker.drop')].map(l => {
  const r = l.getBoundingClientRect(); return (r.left + r.right) / 2; });
return {left: plot.left, width: plot.width, drops: drops};
"""


def test_the_page_shows_what_the_release_run_did(browser: Any, release_run: dict[str, Any]) -> None:
    report = release_run["report"]
    browser.get(release_run["page"].as_uri())
    _at_width(browser, WIDTHS["desktop"])

    # Each update's drops are where the report's events say, on the rendered page.
    drops_seen = 0
    for update in report["updates"]:
        expected = _drops(update["timeline"])
        laid_out = browser.execute_script(MARKERS_JS, update["test"])
        assert laid_out is not None, f"no timeline for {update['test']}"
        end = update["duration_s"]
        want = [laid_out["left"] + laid_out["width"] * t / end for t in expected]
        assert laid_out["drops"] == pytest.approx(want, abs=1.5), update["test"]
        drops_seen += len(expected)
    assert drops_seen >= 2  # field-linux drops the link; the resume test drops it too

    # The compare marks the worse figure (the slower erase), and only the worse ones.
    regressed = {f["name"] for f in report["comparison"]["figures"] if f["regressed"]}
    assert "erase_s" in regressed
    rows = browser.execute_script(
        """return [...document.querySelectorAll('#compare tr[data-figure]')].map(r => ({
             name: r.dataset.figure, worse: r.classList.contains('worse'),
             background: getComputedStyle(r.querySelector('td')).backgroundColor,
             flag: r.querySelector('.flag').textContent}));"""
    )
    assert {r["name"] for r in rows if r["worse"]} == regressed
    erase = next(r for r in rows if r["name"] == "erase_s")
    assert erase["background"] == "rgb(255, 235, 238)" and erase["flag"].startswith("WORSE")
    fine = [r for r in rows if not r["worse"]]
    assert fine and all(r["background"] != erase["background"] for r in fine)

    # Nothing wider than the window, on a desktop and on a phone; screenshots for review.
    for name, width in WIDTHS.items():
        _at_width(browser, width)
        sizes = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert sizes[0] <= sizes[1] == width, f"{name}: page {sizes[0]} px in {width} px"
        _screenshot(browser, SHOTS / f"release-report-{name}.png", width)
    assert (SHOTS / "release-report-desktop.png").stat().st_size > 10_000

    # The page with a kill table fits too.
    browser.get(release_run["with_kill_table"].as_uri())
    for name, width in WIDTHS.items():
        _at_width(browser, width)
        assert browser.execute_script("return document.querySelectorAll('#kill-table tr').length")
        sizes = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert sizes[0] <= sizes[1] == width, f"{name}, kill table: {sizes[0]} px in {width} px"

    # Printed on A5 (its width at 96 dpi): the whole of every timeline on paper, not cut.
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    _at_width(browser, 560)
    printed = browser.execute_script(
        """return [document.documentElement.scrollWidth, window.innerWidth,
             ...[...document.querySelectorAll('.timeline-wrap')].map(
               w => w.scrollWidth - w.clientWidth)];"""
    )
    assert printed[0] <= printed[1] and not any(printed[2:]), printed
