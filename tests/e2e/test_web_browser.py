"""The status page in a real browser: Debian's headless Chromium driven through /usr/bin/chromedriver.

Nothing is downloaded at run time (Selenium Manager is off). Three codes: a completed request (with
invoices kept under billing retention and a vendor that gives no proof), one in progress, and a user
the identity system does not know. Screenshots go to .cache/web/.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.testclient import TestClient

from tests import web_env
from worker.app import Worker
from worker.web.app import create_app
from worker.web.codes import code_hash

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / ".cache" / "web"


def _browser_or_skip() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    message = "chromium and chromium-driver (Debian packages) are not installed: scripts/install installs them"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def site(pg_url: str, pg_schema_urls: Callable[[], str], kafka_bootstrap: str) -> Iterator[dict[str, Any]]:
    _browser_or_skip()
    slow_vendor = {"google_ads": {"connector": "devkit.fakes", "settings": {"url": pg_url, "polls": 2}}}
    settings, services = web_env.build(pg_url, pg_schema_urls(), kafka_bootstrap, extra_systems=slow_vendor)
    app = create_app(services)
    worker = Worker(settings, serve_http=False)
    worker.start()
    codes: dict[str, str] = {}
    try:
        with TestClient(app) as client:
            def callback(user: str) -> str:
                answer = client.post("/facebook/data-deletion", data={"signed_request": web_env.signed_request(user)})
                assert answer.status_code == 200, answer.text
                code: str = answer.json()["confirmation_code"]
                return code

            codes["completed"] = callback(web_env.MARIE_FB)
            first = _request_of(services, codes["completed"])
            _drive(worker, lambda: _status(worker, first) == "completed")
            codes["in_progress"] = callback(web_env.SECOND_FB)
            second = _request_of(services, codes["in_progress"])
            # The worker stops turning once the request is under way: its state stays in progress.
            _drive(worker, lambda: _status(worker, second) == "in_progress")
            codes["unknown"] = callback(web_env.UNKNOWN_FB)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_config=None))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield {"base": f"http://127.0.0.1:{port}", "codes": codes}
        server.should_exit = True
        thread.join(10)
    finally:
        worker.close()
        services.engine.dispose()


def _request_of(services: Any, code: str) -> str:
    confirmation = services.confirmations.by_code_hash(code_hash(code))
    assert confirmation is not None and confirmation.request_id
    request_id: str = confirmation.request_id
    return request_id


def _status(worker: Worker, request_id: str) -> str | None:
    try:
        status: str = worker.store.receipt(request_id)["status"]
    except LookupError:
        return None
    return status


def _drive(worker: Worker, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker did not get there"
        worker.run_once()
        time.sleep(0.02)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    _browser_or_skip()
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1000,1500", "--lang=fr-FR"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "fr-FR,fr"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


EXPECTED = {
    "completed": {"fr": ["Votre demande est terminée.", "Terminée le", "Factures et avoirs",
                         "obligation légale de conservation des pièces comptables", "Demandée",
                         "Délai légal de réponse"],
                  "en": ["Your request is complete.", "Completed on", "Invoices and credit notes",
                         "legal obligation to keep accounting records", "Requested", "Legal deadline"]},
    "in_progress": {"fr": ["Nous traitons votre demande.", "Cette liste sera complète quand la demande sera terminée."],
                    "en": ["We are processing your request.", "This list will be complete when the request is."]},
    "unknown": {"fr": ["nous ne détenions aucune donnée liée à votre compte Facebook"],
                "en": ["we held no data linked to your Facebook account"]},
}


def test_the_status_page_in_both_languages_shows_no_personal_data(site: dict[str, Any], browser: Any) -> None:
    # One site for the three cases: building it (store, broker, worker) is most of the time.
    for case in ("completed", "in_progress", "unknown"):
        _check_page(site, browser, case)


def _check_page(site: dict[str, Any], browser: Any, case: str) -> None:
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    code = site["codes"][case]
    browser.get(f"{site['base']}/status/{code}")
    pages = {}
    for lang in ("fr", "en"):
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang, case
        body = browser.find_element(By.TAG_NAME, "body").text
        for expected in EXPECTED[case][lang]:
            assert expected in body, (case, lang, expected)
        assert "dpo@vet-securite.example" in body and browser.find_element(By.TAG_NAME, "h1").is_displayed()
        # Styled: the stylesheet loaded under the CSP ('self'), so the page background is not the default.
        assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(246, 244, 239)"
        pages[lang] = browser.page_source
        browser.save_screenshot(str(SHOTS / f"status-{case}-{lang}.png"))
        if lang == "fr":
            browser.find_element(By.LINK_TEXT, "English version").click()  # the switch, without JavaScript
    html = "\n".join(pages.values())
    assert not [who for who in web_env.IDENTITIES if who in html], case
    assert code not in html, case  # the code is in the address only, never on the page
