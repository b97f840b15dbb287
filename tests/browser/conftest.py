"""Browser tests: a real headless Chromium (the system one, /usr/bin/chromium) against a live daphne server.

Skipped when Chromium is missing, unless REQUIRE_BROWSER=1 (CI), which turns the skip into a failure.
"""

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in the test thread; the ORM calls the tests
# make around it (fixtures, flushing the database) are not async code.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
HERE = Path(__file__).resolve().parent


def _missing_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing_reason()
    if reason is None or os.environ.get("REQUIRE_BROWSER") == "1":
        return  # with REQUIRE_BROWSER=1 the `chromium` fixture fails instead
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="class")
def chromium():
    """Started per test class and stopped after it: while Playwright runs, the thread has a running
    event loop, which other tests (asyncio.run) must not inherit."""
    reason = _missing_reason()
    if reason is not None:
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture(scope="class")
def class_chromium(request, chromium):
    """For unittest-style classes (live server tests): the browser as self.browser."""
    request.cls.browser = chromium
    yield chromium
