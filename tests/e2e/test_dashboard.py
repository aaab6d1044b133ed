"""The web dashboard in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (nothing downloads a browser), against a real fabric (forwarder subprocess on
SQLite and PostgreSQL, the session's RabbitMQ, an endpoint agent with a manager and workers).

Each page is saved as a screenshot under build/screenshots/ (CI keeps the folder as an artifact).
Every wait is on a condition (WebDriverWait), never a sleep.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskfabric.client import Client, Executor, TaskCancelled
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.forwarder import ForwarderSettings, create_token, create_user, revoke_tokens
from taskfabric.forwarder.admin import disable_user, enable_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

from .conftest import ENDPOINT_SETTINGS

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 60

FORWARDER_SETTINGS: dict[str, Any] = {
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 3.0,
    "status_flush_s": 0.2,
    "confirm_timeout_s": 10.0,
}


def shout(text: str) -> str:
    """A task with output: prints, then returns."""
    print(f"dashboard says {text}")
    return text.upper()


def nap(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "woke"


@dataclasses.dataclass
class Dashboard:
    """A forwarder serving the dashboard, a researcher with an online endpoint, and an operator."""

    backend: str
    url: str
    settings: ForwarderSettings
    researcher: str
    token: str
    endpoint_id: str
    operator: str
    operator_token: str

    def client(self) -> Client:
        return Client(url=self.url, token=self.token)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dashboard(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """Its own forwarder (its `ui.admin_users` names this module's operator) and endpoint."""
    assert broker.management_url, "end-to-end tests need the broker's management API"
    backend = request.param
    folder = tmp_path_factory.mktemp(f"dashboard-{backend}")
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{folder / 'fw.db'}"
    operator = unique_name("operator")
    values = {
        **FORWARDER_SETTINGS,
        "database_url": database_url,
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name(f"ui-{backend}"),
        "ui": {"admin_users": [operator], "sample_period_s": 1.0},
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    settings = ForwarderSettings.from_mapping(values)
    researcher = unique_name("researcher")
    endpoint_name = unique_name("ep")
    try:
        with ForwarderProcess(folder / "forwarder", values) as forwarder:
            create_user(settings, researcher)
            create_user(settings, operator)
            token = create_token(settings, researcher)
            configure_endpoint(endpoint_name, settings=ENDPOINT_SETTINGS)
            with Client(url=forwarder.url, token=token) as client:
                endpoint_id = str(register_endpoint(endpoint_name, client).endpoint_id)
                start_endpoint(endpoint_name, detach=True)
            try:
                yield Dashboard(
                    backend,
                    forwarder.url,
                    settings,
                    researcher,
                    token,
                    endpoint_id,
                    operator,
                    create_token(settings, operator),
                )
            finally:
                if LocalEndpoint(endpoint_name).pid() is not None:
                    stop_endpoint(endpoint_name, timeout_s=30)
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def browsers() -> Iterator[Callable[[], WebDriver]]:
    """Starts headless Chromium browsers, each with a fresh profile; quits them at the end."""
    started: list[tuple[WebDriver, str]] = []

    def start() -> WebDriver:
        profile = tempfile.mkdtemp(prefix="taskfabric-chromium-")
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        started.append((driver, profile))
        return driver

    yield start
    for driver, profile in started:
        try:
            driver.quit()
        except WebDriverException:
            pass
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, message=f"waiting for {what}")


def screenshot(driver: WebDriver, dashboard: Dashboard, page: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if dashboard.backend == "sqlite" else f"-{dashboard.backend}"
    driver.save_screenshot(str(SCREENSHOTS / f"{page}{suffix}.png"))


def sign_in(driver: WebDriver, dashboard: Dashboard, token: str, *, page: str = "/ui/endpoints") -> None:
    driver.get(dashboard.url + page)
    wait_for(driver, lambda d: "/ui/signin" in d.current_url, "the sign-in page")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "whoami"), "a signed-in page")


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def endpoint_online(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        wait_until(
            lambda: (s := client.get_endpoint_status(dashboard.endpoint_id))["status"] == "online" and s["workers"],
            timeout_s=WAIT_S,
            what="the endpoint online with workers",
        )


# --- the tests ----------------------------------------------------------------------------------


def test_signed_out_pages_redirect_to_sign_in(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    driver = browsers()
    for page in ("/ui/endpoints", "/ui/tasks", "/ui/functions", "/ui/admin", f"/ui/endpoints/{dashboard.endpoint_id}"):
        driver.get(dashboard.url + page)
        wait_for(driver, lambda d: "/ui/signin" in d.current_url, f"{page} to redirect to the sign-in page")
        assert driver.find_elements(By.ID, "token"), page
    screenshot(driver, dashboard, "signin")
    driver.find_element(By.ID, "token").send_keys("tf_not-a-token")
    driver.find_element(By.ID, "signin").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "signin-error"), "the refusal")
    assert "sign-in refused" in text_of(driver, "signin-error")
    # signing in, then out: the pages redirect again
    sign_in(driver, dashboard, dashboard.token, page="/ui/tasks")
    assert driver.current_url.endswith("/ui/tasks"), "sign-in returns to the page asked for"
    driver.find_element(By.ID, "signout").click()
    wait_for(driver, lambda d: "/ui/signin" in d.current_url, "the sign-in page after signing out")
    driver.get(dashboard.url + "/ui/tasks")
    wait_for(driver, lambda d: "/ui/signin" in d.current_url, "a redirect once signed out")


def test_researcher_watches_tasks_run_and_opens_one(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    endpoint_online(dashboard)
    driver = browsers()
    sign_in(driver, dashboard, dashboard.token)
    row = f'tr.endpoint[data-endpoint-id="{dashboard.endpoint_id}"] .status'
    wait_for(driver, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, row) if e.text == "online"], "online")
    screenshot(driver, dashboard, "endpoints")

    driver.get(dashboard.url + f"/ui/tasks?endpoint_id={dashboard.endpoint_id}")
    wait_for(driver, lambda d: d.find_elements(By.ID, "task-list"), "the task list")
    words = [f"word{index}" for index in range(6)]
    with dashboard.client() as client, Executor(dashboard.endpoint_id, client=client) as executor:
        futures = [executor.submit(shout, word) for word in words]
        assert [future.result(timeout=WAIT_S) for future in futures] == [word.upper() for word in words]
        task_ids = [str(future.task_id) for future in futures]

    # the open page refreshes itself: the tasks appear, finished, without reloading it
    def finished_rows(d: WebDriver) -> bool:
        # read in one script: the page may swap the table between two WebDriver calls
        rows = d.execute_script(
            "return Array.from(document.querySelectorAll('tr.task')).map(r => [r.dataset.taskId, r.dataset.status])"
        )
        statuses = dict(rows)
        return all(statuses.get(task_id) == "success" for task_id in task_ids)

    wait_for(driver, finished_rows, "the submitted tasks listed as success")
    screenshot(driver, dashboard, "tasks")

    driver.find_element(By.CSS_SELECTOR, f'tr.task[data-task-id="{task_ids[0]}"] a').click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "timeline"), "the task's detail")
    assert text_of(driver, "task-status") == "success"
    assert "dashboard says word0" in text_of(driver, "stdout")
    segments = driver.find_elements(By.CSS_SELECTOR, "#timeline rect.segment")
    assert len(segments) >= 3, "submitted -> received -> started -> finished -> stored"
    moments = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.moment td:first-child")]
    assert moments == ["submitted", "queued", "received by the endpoint", "started", "finished", "result stored"]
    screenshot(driver, dashboard, "task")

    driver.get(dashboard.url + f"/ui/endpoints/{dashboard.endpoint_id}")
    points = driver.find_elements(By.CSS_SELECTOR, "#throughput circle.point")
    assert any(float(point.get_attribute("data-value") or 0) > 0 for point in points), "a throughput point"
    wait_for(
        driver,
        lambda d: (d.refresh() or True) and d.find_elements(By.CSS_SELECTOR, "#queue-depth circle.point"),
        "a queue depth sample",
    )
    job_ids = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#blocks td.job-id")]
    assert len(job_ids) == 1 and job_ids[0], "the LocalProvider's block with its job id"
    screenshot(driver, dashboard, "endpoint")

    driver.get(dashboard.url + "/ui/functions")
    usage = [int(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#functions-mine td.usage")]
    assert len(words) in usage
    screenshot(driver, dashboard, "functions")


def test_cancel_a_running_task_from_the_ui(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    endpoint_online(dashboard)
    driver = browsers()
    sign_in(driver, dashboard, dashboard.token)
    with dashboard.client() as client, Executor(dashboard.endpoint_id, client=client) as executor:
        future = executor.submit(nap, 120)
        wait_until(lambda: future.task_id is not None, timeout_s=WAIT_S, what="the task accepted")
        task_id = str(future.task_id)
        wait_until(lambda: client.get_task(task_id)["status"] == "running", timeout_s=WAIT_S, what="it running")
        driver.get(dashboard.url + f"/ui/tasks/{task_id}")
        assert text_of(driver, "task-status") == "running"
        driver.find_element(By.ID, "cancel").click()
        wait_for(driver, lambda d: d.find_elements(By.ID, "cancel-outcome"), "the cancel's outcome")
        assert text_of(driver, "task-status") == "cancelled"
        assert not driver.find_elements(By.ID, "cancel"), "no cancel button on a finished task"
        screenshot(driver, dashboard, "task-cancelled")
        with pytest.raises(TaskCancelled):
            future.result(timeout=WAIT_S)


def test_another_user_sees_none_of_it(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    endpoint_online(dashboard)
    with dashboard.client() as client, Executor(dashboard.endpoint_id, client=client) as executor:
        assert executor.submit(shout, "mine").result(timeout=WAIT_S) == "MINE"
        theirs = [str(task["task_id"]) for task in client.list_tasks(limit=5)]
        function_ids = [str(f["function_id"]) for f in client.list_functions()]
    other = unique_name("other")
    create_user(dashboard.settings, other)
    driver = browsers()
    sign_in(driver, dashboard, create_token(dashboard.settings, other))
    secrets = [dashboard.endpoint_id, *theirs, *function_ids]
    for page_path in ("/ui/endpoints", "/ui/tasks", "/ui/functions", f"/ui/tasks?endpoint_id={dashboard.endpoint_id}"):
        driver.get(dashboard.url + page_path)
        wait_for(driver, lambda d: d.find_elements(By.ID, "whoami"), page_path)
        source = driver.page_source
        assert not [value for value in secrets if value in source], page_path
    assert not driver.find_elements(By.CSS_SELECTOR, "tr.task, tr.endpoint, tr.function")
    for page_path in (f"/ui/tasks/{theirs[0]}", f"/ui/endpoints/{dashboard.endpoint_id}"):
        driver.get(dashboard.url + page_path)
        assert "NOT_FOUND" in text_of(driver, "error-message"), page_path
    driver.get(dashboard.url + "/ui/admin")
    assert "FORBIDDEN" in text_of(driver, "error-message")
    assert not driver.find_elements(By.LINK_TEXT, "Admin")


def test_a_forged_form_without_the_csrf_token_is_refused(
    dashboard: Dashboard, browsers: Callable[[], WebDriver]
) -> None:
    endpoint_online(dashboard)
    driver = browsers()
    sign_in(driver, dashboard, dashboard.token)
    with dashboard.client() as client, Executor(dashboard.endpoint_id, client=client) as executor:
        future = executor.submit(nap, 120)
        wait_until(lambda: future.task_id is not None, timeout_s=WAIT_S, what="the task accepted")
        task_id = str(future.task_id)
        for forged in ("", "not-the-token"):
            driver.get(dashboard.url + "/ui/tasks")
            _post_form(driver, f"/ui/tasks/{task_id}/cancel", {"csrf_token": forged} if forged else {})
            wait_for(driver, lambda d: d.find_elements(By.ID, "error-message"), "the refusal")
            assert "CSRF_REFUSED" in text_of(driver, "error-message")
        assert client.get_task(task_id)["status"] in ("waiting", "running"), "the forged cancel did nothing"
        # signing out needs the token too: a forged sign-out leaves the session alone
        _post_form(driver, "/ui/signout", {})
        wait_for(driver, lambda d: d.find_elements(By.ID, "error-message"), "the refusal")
        driver.get(dashboard.url + "/ui/tasks")
        assert driver.find_elements(By.ID, "whoami"), "still signed in"
        client.cancel([task_id])
        with pytest.raises(TaskCancelled):
            future.result(timeout=WAIT_S)
    # the sign-in form is bound to its page's nonce cookie: a sign-in posted from elsewhere fails
    answer = httpx.post(dashboard.url + "/ui/signin", data={"token": dashboard.token, "csrf_token": "x"})
    assert answer.status_code == 403 and "taskfabric_session" not in answer.headers.get("set-cookie", "")


def _post_form(driver: WebDriver, action: str, fields: dict[str, str]) -> None:
    """Submit a form the page did not render (what a forging site would post)."""
    driver.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post"; form.action = arguments[0];
        for (const [name, value] of Object.entries(arguments[1])) {
          const input = document.createElement("input");
          input.type = "hidden"; input.name = name; input.value = value; form.appendChild(input);
        }
        document.body.appendChild(form); form.submit();
        """,
        action,
        fields,
    )


def test_operators_see_the_admin_page_without_secrets(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    driver = browsers()
    sign_in(driver, dashboard, dashboard.operator_token)
    driver.find_element(By.LINK_TEXT, "Admin").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "health"), "the Admin page")
    users = text_of(driver, "users")
    assert dashboard.researcher in users and dashboard.operator in users
    assert dashboard.researcher in text_of(driver, "tokens")
    source = driver.page_source
    assert dashboard.token not in source and dashboard.operator_token not in source
    assert "ok" in text_of(driver, "health")
    quotas = text_of(driver, "quotas")
    assert "quotas.submit_requests_per_s" in quotas and "quotas.max_pending_tasks_per_user" in quotas
    screenshot(driver, dashboard, "admin")


def test_revoking_the_token_ends_the_session(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    name = unique_name("leaver")
    create_user(dashboard.settings, name)
    token = create_token(dashboard.settings, name)
    driver = browsers()
    sign_in(driver, dashboard, token)
    revoke_tokens(dashboard.settings, name)
    driver.get(dashboard.url + "/ui/tasks")
    wait_for(driver, lambda d: "/ui/signin" in d.current_url, "the sign-in page once the token is revoked")


def test_disabling_the_user_or_an_expired_token_ends_the_session(
    dashboard: Dashboard, browsers: Callable[[], WebDriver]
) -> None:
    name = unique_name("disabled")
    create_user(dashboard.settings, name)
    driver = browsers()
    sign_in(driver, dashboard, create_token(dashboard.settings, name))
    disable_user(dashboard.settings, name)
    driver.get(dashboard.url + "/ui/tasks")
    wait_for(driver, lambda d: "/ui/signin" in d.current_url, "the sign-in page once the user is disabled")
    enable_user(dashboard.settings, name)
    fresh = browsers()  # the first browser's session counts again once the user is enabled
    created = time.time()
    sign_in(fresh, dashboard, create_token(dashboard.settings, name, expires_in_s=15.0))
    time.sleep(max(0.0, created + 15.5 - time.time()))  # the token's own lifetime, not a wait for the forwarder
    fresh.get(dashboard.url + "/ui/tasks")
    wait_for(fresh, lambda d: "/ui/signin" in d.current_url, "the sign-in page once the token has expired")


def test_sessions_cookie_is_http_only_and_strict(dashboard: Dashboard, browsers: Callable[[], WebDriver]) -> None:
    driver = browsers()
    sign_in(driver, dashboard, dashboard.token)
    cookie = driver.get_cookie("taskfabric_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert cookie["expiry"] > time.time() + 3600, "a session with an expiry"
    assert driver.execute_script("return document.cookie") == "", "no script reads the session"
    assert re.fullmatch(r"v1\.[0-9a-f]{32}\.[0-9a-f]{64}\.\d+\.[\w-]+\.[\w-]+", cookie["value"])
    assert dashboard.token not in cookie["value"]
    assert uuid.UUID(cookie["value"].split(".")[1])


def test_a_collaborator_sees_the_shared_endpoint_and_its_owner_sees_every_user_s_tasks(
    dashboard: Dashboard, browsers: Callable[[], WebDriver]
) -> None:
    """Sharing on the dashboard: bob, granted `submit`, finds alice's endpoint under "Shared with
    me" with his role and opens its status (not its blocks nor its traffic: those are for its
    owner and managers); alice lists every user's tasks on it, with who submitted each."""
    endpoint_online(dashboard)
    bob = unique_name("bob")
    create_user(dashboard.settings, bob)
    bob_token = create_token(dashboard.settings, bob)
    with dashboard.client() as alice:
        alice.share_endpoint(dashboard.endpoint_id, user=bob, role="submit")
        try:
            with (
                Client(url=dashboard.url, token=bob_token) as client,
                Executor(dashboard.endpoint_id, client=client) as executor,
            ):
                bob_future = executor.submit(shout, "bob's")
                assert bob_future.result(timeout=WAIT_S) == "BOB'S"
            driver = browsers()
            sign_in(driver, dashboard, bob_token)
            shared = wait_for(
                driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#endpoints-shared tr.endpoint"), "shared"
            )
            assert [row.get_attribute("data-endpoint-id") for row in shared] == [dashboard.endpoint_id]
            assert "your role: submit" in shared[0].text
            assert not driver.find_elements(By.CSS_SELECTOR, "#endpoints-mine tr.endpoint")
            driver.get(f"{dashboard.url}/ui/endpoints/{dashboard.endpoint_id}")
            wait_for(driver, lambda d: d.find_elements(By.ID, "shared-with-me"), "the submitter's view")
            assert not driver.find_elements(By.ID, "blocks") and not driver.find_elements(By.ID, "throughput")
            screenshot(driver, dashboard, "endpoint-shared-with-me")
            driver.get(f"{dashboard.url}/ui/tasks?endpoint_id={dashboard.endpoint_id}&all_users=true")
            assert "FORBIDDEN" in text_of(driver, "error-message")  # bob does not manage it

            owner = browsers()
            sign_in(owner, dashboard, dashboard.token, page=f"/ui/endpoints/{dashboard.endpoint_id}")
            wait_for(owner, lambda d: d.find_elements(By.ID, "blocks"), "the owner's view")
            owner.find_element(By.ID, "everyones-tasks").click()
            rows = wait_for(
                owner,
                lambda d: [row for row in d.find_elements(By.CSS_SELECTOR, "tr.task") if bob in row.text],
                "bob's task in every user's tasks",
            )
            assert rows[0].get_attribute("data-task-id") == str(bob_future.task_id)
            assert rows[0].find_element(By.CSS_SELECTOR, "td.submitted-by").text == bob
            screenshot(owner, dashboard, "tasks-every-user")
        finally:
            alice.unshare_endpoint(dashboard.endpoint_id, user=bob)
