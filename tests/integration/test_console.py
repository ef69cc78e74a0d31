"""The console in a real headless Chromium (Debian's, driven by Selenium through chromedriver),
against a real stream worker, the ClickHouse sink, Kafka and ClickHouse. Screenshots of the
main pages land in var/artifacts/console/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from procwarden.stack import Stack
from schemas import Decision, ExecEvent, Verdict, Workload, WorkloadKind
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import EXEC, VERDICTS, WORKLOADS
from sinks.clickhouse.migrations import connect
from tests.integration.streamkit import NODE, ROOT, Pipeline, free_port

TOKEN = "test-token"
SHOTS = ROOT / "var" / "artifacts" / "console"
SHOP, CART = "nv.shop.console", "nv.cart.console"


@dataclass
class Console:
    pipe: Pipeline
    browser: WebDriver
    db: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.pipe.web_port}"

    def api(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path,
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def wait(self, condition: Any, timeout: float = 30) -> Any:
        # Pages that refresh themselves replace their rows: a row read mid-refresh is stale.
        return WebDriverWait(self.browser, timeout,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.browser.save_screenshot(str(SHOTS / f"{name}.png"))


def _workload(name: str) -> Workload:
    return Workload(id=f"c-{name}", kind=WorkloadKind.CONTAINER, node=NODE, name=name,
                    namespace="console", service=name, image=f"registry/{name}:1")


@pytest.fixture(scope="module")
def console(kafka: KafkaConnection, tmp_path_factory: pytest.TempPathFactory,
            stack: Stack) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    conn = stack.clickhouse_connection
    db = f"console_{uuid.uuid4().hex[:10]}"
    pipe = Pipeline(kafka, tmp)
    pipe.start_worker(PROCWARDEN_CLICKHOUSE_DATABASE=db)
    env = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
           "PROCWARDEN_CLICKHOUSE_DATABASE": db, "SINKS_GROUP_ID": f"sink-{pipe.prefix}",
           "SINKS_METRICS_PORT": str(free_port()), "SINKS_BATCH_SECONDS": "0.2"}
    with open(tmp / "sink.log", "wb") as log:
        sink = subprocess.Popen([sys.executable, "-m", "procwarden.cli", "sink-clickhouse"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        for name in ("shop", "cart"):
            pipe.send(WORKLOADS.name, f"c-{name}", _workload(name))
        c = Console(pipe, browser, db)
        c.wait(lambda _: {SHOP, CART} <= {g["name"] for g in c.api("/v1/group")["groups"]})
        yield c
    finally:
        browser.quit()
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
        pipe.stop_workers()
        client = connect(ClickHouseConnection(port=conn.port))
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


def _sign_in(c: Console) -> None:
    c.browser.get(c.url + "/console#/groups")
    field = c.wait(ec.presence_of_element_located((By.NAME, "token")))
    c.shot("sign-in")
    field.send_keys(TOKEN)
    c.browser.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    c.wait(ec.presence_of_element_located((By.CSS_SELECTOR, f'input[value="{SHOP}"]')))


def test_zero_drift_toggled_for_two_selected_groups(console: Console) -> None:
    c = console
    _sign_in(c)
    assert {c.api(f"/v1/process_profile/{g}")["process_profile"]["baseline"]
            for g in (SHOP, CART)} == {"zero-drift"}
    for group in (SHOP, CART):
        c.browser.find_element(By.CSS_SELECTOR, f'input[value="{group}"]').click()
    Select(c.browser.find_element(By.NAME, "baseline")).select_by_value("basic")
    c.browser.find_element(By.CSS_SELECTOR, "#bulk button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Updated"))
    assert {c.api(f"/v1/process_profile/{g}")["process_profile"]["baseline"]
            for g in (SHOP, CART)} == {"basic"}
    c.wait(ec.text_to_be_present_in_element((By.ID, "main"), "basic"))
    c.shot("groups")


def test_rules_validate_and_a_new_rule_decides_the_next_event(console: Console) -> None:
    c = console
    c.browser.get(c.url + f"/console#/group/{SHOP}")
    form = c.wait(ec.presence_of_element_located((By.ID, "rule")))
    form.find_element(By.NAME, "name").send_keys("curl")
    form.find_element(By.NAME, "path").send_keys("usr/bin/curl")  # not absolute: refused
    Select(form.find_element(By.NAME, "action")).select_by_value("deny")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = c.wait(lambda b: b.find_element(By.ID, "rule-path-error").text or None)
    assert "path" in error.lower() or "absolute" in error.lower(), error
    assert form.find_element(By.NAME, "path").get_attribute("aria-invalid") == "true"
    c.shot("rule-error")
    path = form.find_element(By.NAME, "path")
    path.clear()
    path.send_keys("/usr/bin/curl")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Saved rule curl"))
    c.wait(ec.text_to_be_present_in_element((By.ID, "main"), "/usr/bin/curl"))
    c.shot("rules")
    rules = c.api(f"/v1/process_profile/{SHOP}")["process_profile"]["process_list"]
    deny = next(r for r in rules if r["name"] == "curl")
    # The next event of the group is decided by the rule the console added.
    sent = c.pipe.send(EXEC.name, "c-shop", ExecEvent(workload_id="c-shop", pid=4242,
                                                      path="/usr/bin/curl", name="curl",
                                                      argv=("curl", "http://x"), user="root"))
    verdict, _ = c.pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                                 and e.payload.event_id == sent.event_id)
    assert isinstance(verdict.payload, Decision)
    assert (verdict.payload.reason, verdict.payload.rule_uuid) == ("violation:RD", deny["uuid"])
    assert verdict.payload.verdict is Verdict.ALERT  # Discover: the deny rule alerts


def test_a_violation_appears_in_security_events(console: Console) -> None:
    c = console
    c.browser.get(c.url + "/console#/events")
    c.wait(ec.presence_of_element_located((By.ID, "filters")))
    c.browser.find_element(By.NAME, "group").send_keys(SHOP)
    c.browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    # The incident of the previous test's exec arrives through the sink; the page refreshes.
    text = c.wait(lambda b: next((r.text for r in b.find_elements(
        By.CSS_SELECTOR, "#events tbody tr") if "/usr/bin/curl" in r.text), None), timeout=60)
    assert "Process.Profile.Violation" in text and SHOP in text
    c.shot("security-events")

    def open_incident(b: WebDriver) -> bool:
        for r in b.find_elements(By.CSS_SELECTOR, "#events tbody tr"):
            if "/usr/bin/curl" in r.text:
                r.click()
                return True
        return False
    c.wait(open_incident)
    details = c.wait(ec.presence_of_element_located((By.CSS_SELECTOR, "#incident dl")))
    assert "proc_cmd" in details.text and "curl http://x" in details.text
    c.shot("security-event-details")


def test_dry_run_box(console: Console) -> None:
    c = console
    c.browser.get(c.url + "/console#/dry-run")
    form = c.wait(ec.presence_of_element_located((By.ID, "dry")))
    Select(form.find_element(By.NAME, "workload")).select_by_value("c-shop")
    form.find_element(By.NAME, "path").send_keys("/usr/bin/curl")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    result = c.wait(lambda b: b.find_element(By.ID, "dry-run-result").text or None)
    assert "violation:RD" in result and "alert" in result, result
    c.shot("dry-run")


def test_reads_need_the_token_unless_open(console: Console) -> None:
    c = console
    c.browser.execute_script("sessionStorage.clear()")
    c.browser.get(c.url + "/console#/groups")
    c.wait(ec.presence_of_element_located((By.ID, "signin")))
    assert Path(SHOTS / "groups.png").exists()


def test_custom_group_and_a_workloads_effective_rules(console: Console) -> None:
    c = console
    c.browser.get(c.url + "/console#/groups")
    c.browser.execute_script(f"sessionStorage.setItem('procwarden-token', '{TOKEN}')")
    c.browser.refresh()
    form = c.wait(ec.presence_of_element_located((By.ID, "group")))
    form.find_element(By.NAME, "name").send_keys("lockdown")
    form.find_element(By.NAME, "value").send_keys("console")  # namespace = console
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Saved custom group lockdown"))
    group = c.api("/v1/group/lockdown")["group"]
    assert group["criteria"] == [{"key": "namespace", "op": "=", "value": "console"}]
    c.browser.get(c.url + "/console#/group/lockdown")
    rule = c.wait(ec.presence_of_element_located((By.ID, "rule")))
    rule.find_element(By.NAME, "name").send_keys("*")
    rule.find_element(By.NAME, "path").send_keys("/tmp/*")
    Select(rule.find_element(By.NAME, "action")).select_by_value("deny")
    rule.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Saved rule"))
    c.browser.get(c.url + "/console#/workload/c-cart")
    table = c.wait(ec.presence_of_element_located((By.CSS_SELECTOR, "#main table")))
    c.wait(lambda _: "/tmp/*" in table.text)
    row = next(r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if "/tmp/*" in r.text)
    assert "lockdown" in row.text and "deny" in row.text
    c.shot("workload-effective-rules")


def test_a_rule_is_changed_then_deleted(console: Console) -> None:
    c = console
    c.browser.get(c.url + "/console#/groups")
    c.browser.execute_script(f"sessionStorage.setItem('procwarden-token', '{TOKEN}')")
    c.browser.get(c.url + f"/console#/group/{CART}")
    c.browser.refresh()
    form = c.wait(ec.presence_of_element_located((By.ID, "rule")))
    form.find_element(By.NAME, "name").send_keys("wget")
    form.find_element(By.NAME, "path").send_keys("/usr/bin/wget")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Saved rule wget"))

    def button_in_row(text: str, label: str) -> Any:
        # Found within the wait: the table re-renders after a save, and a row found before
        # that is stale by the time its button is looked up (the wait retries stale ones).
        return c.wait(lambda b: next((r.find_element(By.XPATH, f".//button[text()='{label}']")
                                      for r in b.find_elements(By.CSS_SELECTOR, "#main tbody tr")
                                      if text in r.text), None))
    button_in_row("/usr/bin/wget", "Edit").click()
    form = c.browser.find_element(By.ID, "rule")
    path = form.find_element(By.NAME, "path")
    assert path.get_attribute("value") == "/usr/bin/wget"
    path.clear()
    path.send_keys("/bin/wget")  # a changed path: the old rule goes, the new one comes
    Select(form.find_element(By.NAME, "action")).select_by_value("deny")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Saved rule wget /bin/wget"))
    rules = {(r["name"], r["path"], r["action"])
             for r in c.api(f"/v1/process_profile/{CART}")["process_profile"]["process_list"]}
    assert ("wget", "/bin/wget", "deny") in rules and ("wget", "/usr/bin/wget", "allow") \
        not in rules
    button_in_row("/bin/wget", "Delete").click()
    c.wait(ec.text_to_be_present_in_element((By.ID, "status"), "Deleted rule wget"))
    assert not [r for r in c.api(f"/v1/process_profile/{CART}")["process_profile"]
                ["process_list"] if r["name"] == "wget"]


def test_the_browser_refused_nothing_under_the_csp(console: Console) -> None:
    """Last in this file: every page the tests above drove ran under the worker's
    Content-Security-Policy, and Chromium reported no violation (an inline script or style,
    or a load from elsewhere, would be refused and logged)."""
    with urllib.request.urlopen(console.url + "/console", timeout=10) as resp:
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    console.browser.get(console.url + "/console#/groups")
    console.wait(ec.presence_of_element_located((By.CSS_SELECTOR, f'input[value="{SHOP}"]')))
    logs = console.browser.get_log("browser")  # type: ignore[no-untyped-call]
    refused = [e["message"] for e in logs if "Content Security Policy" in e["message"]]
    assert refused == []
