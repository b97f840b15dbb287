"""The review page in a real browser: a whole trajectory reviewed with the keyboard only, the
manager's dashboard updating over the websocket, drafts saving themselves, the help overlay."""

import re

import pytest
from channels.testing import ChannelsLiveServerTestCase
from playwright.sync_api import expect

from annotation.kinds.lfm import LFM
from annotation.models import Answer, Role
from tests.factories import PASSWORD, add_member, make_items, make_project

TIMEOUT_MS = 15000


@pytest.mark.browser
@pytest.mark.usefixtures("class_chromium")
class ReviewPageInBrowser(ChannelsLiveServerTestCase):
    serve_static = True

    def setUp(self):
        self.project = make_project("Browser", answers_per_item=1)
        self.manager = add_member(self.project, Role.MANAGER, "boss")
        self.annotator = add_member(self.project, Role.ANNOTATOR, "ann")
        # 4 steps; the LLM labels are yes, no, yes, no
        self.items = make_items(self.project, count=3, n_steps=4)
        self.contexts = []

    def tearDown(self):
        for ctx in self.contexts:
            ctx.close()

    def new_page(self):
        ctx = self.browser.new_context()
        ctx.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(ctx)
        return ctx.new_page()

    def login(self, page, user, next_path):
        page.goto(f"{self.live_server_url}/accounts/login/?next={next_path}")
        page.fill('input[name="username"]', user.username)
        page.fill('input[name="password"]', PASSWORD)
        page.click('button[type="submit"]')
        page.wait_for_url(re.compile(re.escape(self.live_server_url + next_path.rstrip("/"))))

    def open_review(self, page):
        """Log in as the annotator and land on the first item; returns its id."""
        self.login(page, self.annotator, f"/projects/{self.project.pk}/review/")
        page.wait_for_url(re.compile(rf"/projects/{self.project.pk}/review/\d+/$"))
        page.wait_for_selector("#step-0.current")
        return int(page.url.rstrip("/").rsplit("/", 1)[1])

    def test_a_whole_trajectory_reviewed_with_the_keyboard_updates_the_dashboard(self):
        dash = self.new_page()
        self.login(dash, self.manager, f"/projects/{self.project.pk}/")
        # (selectors, not wait_for_function: that evals in the page, which the CSP forbids)
        dash.wait_for_selector("html[data-live='ws']", state="attached")
        assert dash.text_content("#stat-answers").strip() == "0"
        dash.evaluate("window.__notReloaded = true")

        page = self.new_page()
        first_id = self.open_review(page)
        kb = page.keyboard
        progress = page.locator("#review-progress")
        assert re.sub(r"\s+", " ", progress.text_content()).strip() == "step 1 of 4, 0 with verdicts"

        kb.press("a")  # step 0: agree (productive)
        kb.press("j")
        page.wait_for_selector("#step-1.current")
        kb.press("d")  # step 1 shows "not productive": disagree -> productive
        kb.press("r")
        assert page.evaluate("document.activeElement.name") == "step-1-reason"
        kb.type("it opened the fridge")
        kb.press("Escape")
        assert page.evaluate("document.activeElement.id") == "step-1"
        kb.press("j")
        kb.press("u")  # step 2: unsure
        kb.press("j")
        kb.press("a")  # step 3: agree (not productive)
        assert re.sub(r"\s+", " ", progress.text_content()).strip() == "step 4 of 4, 4 with verdicts"
        assert page.get_attribute("#step-1", "data-verdict") == "disagree"
        assert page.is_checked('input[name="step-1-label"][value="yes"]')
        kb.press("o")
        assert page.evaluate("document.activeElement.name") == "notes"
        kb.type("clean run")
        kb.press("Escape")
        kb.press("?")
        page.wait_for_selector("#review-help", state="visible")
        kb.press("?")
        page.wait_for_selector("#review-help", state="hidden")

        kb.press("Control+Enter")
        page.wait_for_url(re.compile(rf"/projects/{self.project.pk}/review/(?!{first_id}/)\d+/$"))
        page.wait_for_selector("#step-0.current")

        expect(dash.locator("#stat-answers")).to_have_text("1", timeout=TIMEOUT_MS)
        assert dash.evaluate("window.__notReloaded") is True

        answer = Answer.objects.get(item_id=first_id, user=self.annotator)
        assert answer.status == Answer.Status.SUBMITTED
        assert [(s["step"], s["verdict"], s["label"]) for s in answer.data["steps"]] == [
            (0, "agree", True), (1, "disagree", True), (2, "unsure", None), (3, "agree", False),
        ]
        assert answer.data["steps"][1]["reason"] == "it opened the fridge"
        assert answer.data["notes"] == "clean run"
        assert answer.time_spent_ms > 0
        assert Answer.objects.filter(user=self.annotator).count() == 1

    def test_help_opens_with_question_mark_and_drafts_save_themselves(self):
        page = self.new_page()
        item_id = self.open_review(page)
        help_box = page.locator("#review-help")
        assert help_box.is_hidden()
        page.keyboard.press("?")
        help_box.wait_for(state="visible")
        text = help_box.text_content()
        for key, what in LFM.keyboard:
            assert key in text and what in text
        page.keyboard.press("Escape")
        help_box.wait_for(state="hidden")

        page.keyboard.press("A")  # agree with every step that has no verdict
        assert page.locator('.step[data-verdict="agree"]').count() == 4
        expect(page.locator("#review-saved")).to_have_text(re.compile(r"^\s*saved"), timeout=TIMEOUT_MS)
        draft = Answer.objects.get(item_id=item_id, user=self.annotator)
        assert draft.status == Answer.Status.DRAFT
        assert [s["verdict"] for s in draft.data["steps"]] == ["agree"] * 4

    def test_an_incomplete_submit_shows_the_problem_and_keeps_the_input(self):
        page = self.new_page()
        item_id = self.open_review(page)
        page.keyboard.press("d")
        page.keyboard.press("r")
        page.keyboard.type("not really")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#review-errors")
        assert "3 step(s) have no verdict: 1, 2, 3" in page.text_content("#review-errors")
        assert page.input_value('textarea[name="step-0-reason"]') == "not really"
        assert page.is_checked('input[name="step-0-verdict"][value="disagree"]')
        page.wait_for_selector("#step-1.current")  # the first step that needs a verdict
        assert page.url.rstrip("/").endswith(f"/review/{item_id}")
        assert not page.is_disabled("#review-submit")
        page.keyboard.press("A")
        page.keyboard.press("Control+Enter")
        page.wait_for_url(re.compile(rf"/projects/{self.project.pk}/review/(?!{item_id}/)\d+/$"))
        answer = Answer.objects.get(item_id=item_id, user=self.annotator)
        assert answer.status == Answer.Status.SUBMITTED
        assert answer.data["steps"][0] == {"step": 0, "verdict": "disagree", "label": False, "reason": "not really"}
