"""The live dashboard in a real browser when Redis goes away: the websocket closes, the page says it
polls instead, and an answer submitted meanwhile shows up on it.

The server is `manage.py serve` in a child process (tests/test_faults.py) with REDIS_URL pointing at a
redis-server of the test's own, which the test kills with SIGKILL.
"""

import pytest
from django.conf import settings

from annotation.models import Role
from tests.factories import add_member, make_items, make_project
from tests.test_faults import PrivateRedis, Server, Submit, annotators, call, session_id

pytestmark = [pytest.mark.browser, pytest.mark.fault, pytest.mark.slow]

TIMEOUT_MS = 15000  # polling runs every 5 s


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_the_dashboard_falls_back_to_polling_when_redis_dies(chromium, tmp_path):
    redis = PrivateRedis(tmp_path)
    server = Server(tmp_path, REDIS_URL=redis.url)
    context = None
    try:
        project = make_project("Redis down", answers_per_item=1, retrain_every=0)
        make_items(project, count=2, n_steps=3)
        manager = add_member(project, Role.MANAGER, "boss")
        [annotator] = annotators(project, server.url, 1)
        server.start()

        context = chromium.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session_id(manager),
                              "url": server.url}])
        page = context.new_page()
        page.goto(f"{server.url}/projects/{project.pk}/")
        page.wait_for_function("() => document.documentElement.dataset.live === 'ws'")
        assert page.text_content("#stat-answers").strip() == "0"

        redis.kill9()
        page.wait_for_function("() => document.documentElement.dataset.live === 'polling'")
        assert "refreshing every 5 s" in page.text_content("#live-status")

        item = call("POST", f"{server.url}/api/projects/{project.pk}/next/", token=annotator.token).json()
        submit = annotator.submit(Submit(annotator.username, item["id"], annotator.answer_body(item)))
        assert submit.status == 201, server.logs()
        page.wait_for_function("() => document.getElementById('stat-answers').textContent.trim() === '1'")
        assert page.evaluate("document.documentElement.dataset.live") == "polling"
    finally:
        if context is not None:
            context.close()
        server.stop()
        redis.kill9()
