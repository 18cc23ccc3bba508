"""A person in a real browser (Debian's Chromium, headless): log in, trigger the DAG from
the form with non-default Params, watch the run succeed, open the report page; the report pages
refuse a logged-out browser and crafted paths, and hostile lake names never run script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tasks.io.lake import Lake
from tasks.prep import datagen
from tasks.spec import spec_for
from tests.conftest import REPO
from tests.e2e.conftest import DAG_ID, day, failed_logs

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
SHOTS = Path(os.environ.get("LEPTONFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
DOC_SHOTS = REPO / "docs" / "screenshots"  # the pictures the docs (and issue 23) point at


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make system-deps installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, airflow_stack):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{airflow_stack.url}/", wait_until="networkidle")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", airflow_stack.password())
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)
    yield page
    page.close()


def _open_trigger_form(page, stack):
    page.goto(f"{stack.url}/dags/{DAG_ID}", wait_until="networkidle")
    page.get_by_role("button", name="Trigger Dag").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    return dialog


def _fill(dialog, section: str, name: str, value: str) -> None:
    field = dialog.locator(f"[name=element_{name}]")
    if not field.is_visible():
        dialog.get_by_role("button", name=section).click()
    field.fill(value)


def test_trigger_from_form_with_non_default_params(page, airflow_stack, scheduled_run):
    ds = day(4)
    dialog = _open_trigger_form(page, airflow_stack)
    _fill(dialog, "Data", "interval_date", ds)
    _fill(dialog, "Training", "epochs", "1")
    _fill(dialog, "Training", "hidden", "32")
    page.screenshot(path=str(SHOTS / "trigger-form.png"))
    dialog.get_by_role("button", name="Trigger").last.click()
    # the run the form created carries our Params
    deadline = time.time() + 60
    run = None
    while run is None and time.time() < deadline:
        status, body = airflow_stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
        run = next((r for r in body.get("dag_runs", []) if (r.get("conf") or {}).get("interval_date") == ds), None)
        time.sleep(2)
    assert run is not None, "the form did not create a run with interval_date"
    assert run["conf"]["epochs"] == 1 and run["conf"]["hidden"] == "32"
    state = airflow_stack.wait_run(DAG_ID, run["dag_run_id"], timeout=1200)
    assert state == "success", failed_logs(airflow_stack, run["dag_run_id"],
                                           airflow_stack.task_states(DAG_ID, run["dag_run_id"]))
    page.goto(f"{airflow_stack.url}/dags/{DAG_ID}/runs/{run['dag_run_id']}", wait_until="networkidle")
    page.screenshot(path=str(SHOTS / "run-succeeded.png"))
    # the report page, through the Airflow api-server (plugin), with real data and pictures
    page.goto(f"{airflow_stack.url}/leptonflow/report/events/{ds}", wait_until="networkidle")
    text = page.inner_text("body")
    assert "rows in" in text and "balanced: True" in text
    assert page.locator("img").count() >= 2  # training curves, calibration, compression plots
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    # Data Docs of the validation, served from the lake through the plugin
    page.get_by_role("link", name="Data Docs: raw/index.html").click()
    page.wait_for_load_state("networkidle")
    docs = page.inner_text("body")
    assert "expect_" in docs and "events.raw" in docs
    page.screenshot(path=str(SHOTS / "data-docs.png"), full_page=True)


def test_form_refuses_bad_value(page, airflow_stack):
    """The form enforces the Param schema: epochs has minimum 1, so 0 cannot be submitted."""
    dialog = _open_trigger_form(page, airflow_stack)
    _fill(dialog, "Training", "epochs", "0")
    field = dialog.locator("[name=element_epochs]")
    field.blur()
    time.sleep(1)
    page.screenshot(path=str(SHOTS / "trigger-form-bad-value.png"))
    assert field.input_value() != "0"
    assert int(field.input_value()) >= 1


HOSTILE = "<img src=x onerror=alert(document.domain)>"


def test_report_pages_need_a_login_and_refuse_crafted_paths(browser, page, airflow_stack, scheduled_run):
    """Logged out: refused (sent to the login page, which brings the browser back); logged in: the pages,
    with hostile lake folder names inert; crafted file paths (traversal, a data file, the keyring, an
    absolute path) refused."""
    assert scheduled_run["state"] == "success"
    ds, url = scheduled_run["ds"], airflow_stack.url
    lake = Path(airflow_stack.env["LEPTONFLOW_LAKE"])
    keyring = Path(airflow_stack.env["LEPTONFLOW_KEYRING"])
    secret = keyring.read_bytes() if keyring.is_file() else b"\0no keyring file\0"
    hostile = [lake / "clean" / HOSTILE / f"ds={ds}", lake / "clean" / "events" / f"ds={HOSTILE}"]
    for folder in hostile:
        folder.mkdir(parents=True)
    dialogs: list[str] = []
    try:
        # logged out: no page, only the login form; after logging in, back on the report
        anon_ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        anon = anon_ctx.new_page()
        anon.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        assert anon.request.get(f"{url}/leptonflow/").status == 401
        assert anon.request.get(f"{url}/leptonflow/report/events/{ds}").status == 401
        anon.goto(f"{url}/leptonflow/report/events/{ds}", wait_until="networkidle")
        assert "/auth/login" in anon.url and "rows in" not in anon.inner_text("body")
        anon.screenshot(path=str(SHOTS / "report-logged-out.png"))
        anon.fill("input[name=username]", "admin")
        anon.fill("input[name=password]", airflow_stack.password())
        anon.keyboard.press("Enter")
        anon.wait_for_url(f"{url}/leptonflow/report/events/{ds}", timeout=60_000)
        assert "rows in" in anon.inner_text("body")
        anon_ctx.close()

        # logged in: the index lists the run; the hostile folders neither render nor run
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/leptonflow/", wait_until="networkidle")
        text = page.inner_text("body")
        assert f"events — {ds}" in text and "onerror" not in text and page.locator("img").count() == 0
        page.get_by_role("link", name=f"events — {ds}").click()
        page.wait_for_load_state("networkidle")
        assert "rows in" in page.inner_text("body")
        page.get_by_role("link", name="Data Docs: clean/index.html").click()
        page.wait_for_load_state("networkidle")
        assert "expect_split_groups_to_be_disjoint" in page.inner_text("body")
        assert dialogs == []

        # crafted paths, with the logged-in user's cookie
        clean = Lake(str(lake)).manifest("clean", "events", ds, verify=False)  # found as readers find it
        data_file = Lake(str(lake)).abspath(clean, clean.files[0])
        docs = lake / "validation" / "events" / f"ds={ds}"
        crafted = [
            f"/leptonflow/file?path={quote(str(keyring))}",
            f"/leptonflow/file?path={quote(str(data_file))}",
            "/leptonflow/file?path=/etc/passwd",
            f"/leptonflow/file?path={quote(str(docs))}/..%2F..%2F..%2F..%2Fkeys%2Fkeyring.json",
            f"/leptonflow/datadocs/events/{ds}/..%2F..%2F..%2F..%2Fkeys%2Fkeyring.json",
            f"/leptonflow/datadocs/events/{ds}/{quote(clean.files[0].path, safe='')}",
            f"/leptonflow/datadocs/events/{ds}/%2Fetc%2Fpasswd",
            f"/leptonflow/report/events/{quote(HOSTILE, safe='')}",
            f"/leptonflow/report/{quote(HOSTILE, safe='')}/{ds}",
        ]
        for route in crafted:
            r = page.request.get(f"{url}{route}", max_redirects=0)
            assert r.status in (400, 404), (route, r.status)
            assert secret not in r.body() and b"root:" not in r.body() and b"PAR1" not in r.body()
    finally:
        for folder in hostile:
            shutil.rmtree(folder.parent if HOSTILE in folder.parent.name else folder, ignore_errors=True)


# The steps of the trend page's quantities, for tiny intervals, in one process (a CLI call per step would
# pay its start-up 44 times): what `python -m tasks <step> --validation-policy warn` does, step after step.
_COMMIT_DAYS = """
import json, sys
from tasks import steps
from tasks.context import StepContext
for ds in sys.argv[1:]:
    results = {}
    for step in ("validate_raw", "clean", "split", "validate_clean"):
        ctx = StepContext(dataset="events", ds=ds, params={"validation_policy": "warn"}, upstream=results)
        results[step] = steps.run_step(step, ctx)
    print(json.dumps({"ds": ds, "clean_ok": results["validate_clean"]["success"]}), flush=True)
"""


def test_trends_page_shows_intervals_and_a_failed_check(page, airflow_stack, tmp_path):
    """Eleven tiny intervals committed into the stack's lake (one with drifted categories, so its clean
    validation fails under policy warn); the logged-in trends page lists them all, that one in red."""
    import json

    lake = airflow_stack.env["LEPTONFLOW_LAKE"]
    spec = spec_for("events")
    good = [day(i) for i in range(45, 35, -1)]  # 10 days, older than any day the other tests use
    drifted = day(35)
    datagen.generate(lake, spec, good[0], len(good), 2_000, seed=21)
    datagen.generate(lake, spec, drifted, 1, 2_000, seed=22, drift=1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTONFLOW_")}
    env.update({k: v for k, v in airflow_stack.env.items() if k.startswith("LEPTONFLOW_")},
               PYTHONPATH=f"{REPO}:{REPO / 'plugins'}")
    script = tmp_path / "commit_days.py"
    script.write_text(_COMMIT_DAYS)
    proc = subprocess.run([sys.executable, str(script), *good, drifted], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"ds"')]
    committed = {r["ds"]: r["clean_ok"] for r in map(json.loads, lines)}
    assert committed[drifted] is False and all(committed[d] for d in good), committed

    page.goto(f"{airflow_stack.url}/leptonflow/trends/events?n=30", wait_until="networkidle")
    rows = page.locator("table tr:has(td.ds)")
    shown = rows.all_inner_texts()
    assert rows.count() >= 11, shown
    for ds in [*good, drifted]:
        assert any(r.startswith(ds) for r in shown), ds
    bad_row = page.locator(f"tr.bad:has(td.ds a:text-is('{drifted}'))")
    assert bad_row.count() == 1
    bad_cell = bad_row.locator("td.bad[title^='clean validation failed']")  # the clean check's column, in red
    assert bad_cell.count() == 1 and bad_cell.inner_text() == "FAIL"
    assert page.locator(".plots img").count() >= 6
    assert bad_cell.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(253, 226, 226)"  # #fde2e2
    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    for folder in (SHOTS, DOC_SHOTS):
        page.screenshot(path=str(folder / "trends.png"), full_page=True)
    bad_row.scroll_into_view_if_needed()
    bad_row.evaluate("e => e.style.outline = '3px solid #c33'")
    for folder in (SHOTS, DOC_SHOTS):
        page.screenshot(path=str(folder / "trends-failed.png"))
    # one click to the day's details
    bad_row.locator("td.ds a").click()
    page.wait_for_load_state("networkidle")
    assert drifted in page.url and "rows in" in page.inner_text("body")
