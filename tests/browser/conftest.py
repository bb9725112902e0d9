"""Fixtures of the browser tests: ONE Label Studio + moto S3 + backend (gunicorn, the ci-profile tiny DAM) for the
whole session, started the way tests/integration does it (dam_tools.local_stack / provisioning), and Debian's
headless Chromium driven by Playwright.

Chromium: CHROMIUM_BIN, else /usr/bin/chromium, else `chromium` on PATH. Missing: the tests skip with the install
command, unless BROWSER_TESTS_REQUIRED=1 (.ci/run sets it after installing it), where that is a failure.
Screenshots go to runs/browser-artifacts/<scenario>.png (gitignored); a failed test also leaves <test>-failed.png.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from dam_tools.local_stack import LabelStudioCredentials, LocalStack, ManagedProcess, free_port, label_studio_bin
from dam_tools.ls_api import LabelStudioAPI
from dam_tools.provisioning import S3Target, backend_env, create_bucket
from lsf_editor import ARTIFACTS, log_in

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [  # headless in a container: no sandbox, no GPU, nothing that phones home
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 1000}


@dataclass
class EditorStack:
    """The running services the browser talks to."""

    ls: ManagedProcess
    backend: ManagedProcess
    s3: S3Target
    api: LabelStudioAPI
    credentials: LabelStudioCredentials
    run_dir: Path
    ls_data_dir: Path  # LABEL_STUDIO_BASE_DATA_DIR: uploads are under media/upload/<project>/

    def upload_path(self, data_url: str) -> Path:
        """The file behind a task's ``/data/upload/<project>/<name>`` URL."""
        return self.ls_data_dir / "media" / data_url.split("/data/", 1)[1]


def chromium_path() -> Path | None:
    for candidate in (os.environ.get("CHROMIUM_BIN"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


MISSING_CHROMIUM = ("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium "
                    "(or set CHROMIUM_BIN); .ci/run installs it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """No Chromium: skip with the fix rather than start Label Studio for nothing (the browser fixture fails instead
    when BROWSER_TESTS_REQUIRED=1)."""
    if chromium_path() is not None or os.environ.get("BROWSER_TESTS_REQUIRED") == "1":
        return
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.skip(reason=MISSING_CHROMIUM))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"report_{report.when}", report)  # the page fixture screenshots failures
    return report


@pytest.fixture(scope="session")
def editor_stack(tmp_path_factory: pytest.TempPathFactory, trained_dam_dir: Path) -> Iterator[EditorStack]:
    """Label Studio + moto + backend for the whole browser session (Label Studio's first start: ~40-60 s)."""
    bin_path = label_studio_bin()  # raises with the fix when Label Studio is not installed
    assert os.access(bin_path, os.X_OK), bin_path
    run_dir = tmp_path_factory.mktemp("browser-stack")
    credentials = LabelStudioCredentials()
    with LocalStack(run_dir) as services:
        s3_service = services.start_s3(free_port())
        s3 = S3Target(endpoint=s3_service.url, bucket="ls-export", prefix="annotations")
        create_bucket(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, s3.region)
        ls_data_dir = run_dir / "label-studio"
        ls = services.start_label_studio(free_port(), credentials, ls_data_dir)
        env = backend_env(trained_dam_dir, ls.url, credentials.token, run_dir, segmenter="region", s3=s3,
                          extra={"NO_REGION_MODE": "skip", "MAX_NEW_TOKENS": "24", "MODEL_POLL_SECONDS": "0"})
        backend = services.start_backend(free_port(), env)
        yield EditorStack(ls=ls, backend=backend, s3=s3, api=LabelStudioAPI(ls.url, credentials.token),
                          credentials=credentials, run_dir=run_dir, ls_data_dir=ls_data_dir.resolve())


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:  # only reached with BROWSER_TESTS_REQUIRED=1
        pytest.fail(MISSING_CHROMIUM)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def signed_in_state(browser: Browser, editor_stack: EditorStack) -> dict:
    """Cookies of a session logged in through Label Studio's login form (done once)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    log_in(page, editor_stack.ls.url, editor_stack.credentials.username, editor_stack.credentials.password)
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def page(browser: Browser, signed_in_state: dict, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test (its own localStorage: editor toggles do not leak between scenarios)."""
    context = browser.new_context(viewport=VIEWPORT, storage_state=signed_in_state)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"))
    context.close()
