"""Property-based tests of the whole API against its own OpenAPI document (schemathesis).

The document is generated in-process by drf-spectacular, as /api/schema/ serves it, so every endpoint
it describes is tested, new ones included. Each operation gets a bounded number of generated requests
(valid and invalid ones: schemathesis' positive and negative modes), sent through the WSGI app with the
token of the manager (and site staff) of a populated project; most of the time the ids in the path are
replaced by ids of real objects of that project (items, answers, members, imports, runs, versions), so
requests get past the 404s. The one check: no response is a server error (5xx).

Runs in the normal test run (marked `slow`: about a minute). Hypothesis is derandomized, so a run is
reproducible; failures print the request as a curl command.
"""

import json
from datetime import timedelta

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from annotation.models import (
    Answer,
    AuditEvent,
    Final,
    ImportJob,
    Item,
    Membership,
    ModelVersion,
    Role,
    TrainingRun,
)

from .factories import add_member, full_answer, make_items, make_project

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

MAX_EXAMPLES = 25


def openapi_document() -> dict:
    """The OpenAPI document exactly as GET /api/schema/?format=json serves it."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


schema = schemathesis.openapi.from_dict(openapi_document())
REAL_IDS: dict[str, list] = {}  # path parameter -> ids of real objects, set by the `world` fixture


REAL_SHARE = {"project_id": 85}  # percent of examples whose id is a real object's; 60 for the other ids


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Each id in the path: a real object's id most of the time, else the generated value."""
    if not path_parameters:
        return st.just(path_parameters)

    def choose(name, value):
        real, share = REAL_IDS.get(name), REAL_SHARE.get(name, 60)
        if not real:
            return st.just(value)
        return st.integers(0, 99).map(lambda n: real[n % len(real)] if n < share else value)

    return st.fixed_dictionaries({name: choose(name, value) for name, value in path_parameters.items()})


@pytest.fixture
def world(db):
    """A populated project: items in every state, answers, a final label, an import, a run, a version."""
    project = make_project("Fuzzed", answers_per_item=2)
    manager = add_member(project, Role.MANAGER, "fuzz-manager")
    manager.is_staff = True  # site staff create projects: POST /api/projects/ gets past its 403 too
    manager.save(update_fields=["is_staff"])
    annotator = add_member(project, Role.ANNOTATOR, "fuzz-annotator")
    add_member(project, Role.REVIEWER, "fuzz-reviewer")
    items = make_items(project, count=4, n_steps=2)
    now = timezone.now()
    answers = [
        Answer.objects.create(item=items[0], user=annotator, status=Answer.Status.SUBMITTED,
                              data=full_answer(items[0]), submitted_at=now),
        Answer.objects.create(item=items[1], user=annotator, status=Answer.Status.DRAFT,
                              data=full_answer(items[1], "disagree")),
    ]
    Item.objects.filter(pk=items[2].pk).update(state=Item.State.FINAL)
    Final.objects.create(item=items[2], data={"steps": {}}, method=Final.Method.ADJUDICATED, decided_by=manager,
                         decided_at=now)
    Item.objects.filter(pk=items[3].pk).update(state=Item.State.DONE)
    job = ImportJob.objects.create(project=project, created_by=manager, filename="f.jsonl", path="imports/gone",
                                   status=ImportJob.Status.FAILED,
                                   errors=[{"line": 1, "field": "steps", "message": "required"}])
    run = TrainingRun.objects.create(project=project, status=TrainingRun.Status.SUCCEEDED, requested_by=manager,
                                     finished_at=now, losses=[[1, 0.5]])
    version = ModelVersion.objects.create(project=project, training_run=run, version="0" * 64, path="models/none",
                                          feedback_ids=[[items[2].pk, 0]], metrics={"accuracy": 0.5},
                                          created_at=now - timedelta(minutes=1))
    AuditEvent.record(actor=manager, verb="project.settings", obj=project, project=project,
                      before={"name": "x"}, after={"name": "Fuzzed"})
    ids = {
        "project_id": [project.pk],
        "item_id": [i.pk for i in items],
        "answer_id": [a.pk for a in answers],
        "membership_id": list(Membership.objects.filter(project=project).values_list("pk", flat=True)),
        "job_id": [job.pk],
        "run_id": [run.pk],
        "version_id": [version.pk],
        "name": ["lfm_trajectory"],
    }
    REAL_IDS.clear()
    REAL_IDS.update(ids)
    yield {"token": Token.objects.create(user=manager).key, "ids": ids}
    REAL_IDS.clear()


@pytest.fixture
def app():
    """The WSGI app, keeping the test's database connection open between requests (as Django's test
    client does: the app closes connections at the end of each request)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        with override_settings(ALLOWED_HOSTS=["*"]):
            yield WSGIHandler()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, world, app):
    case.call_and_validate(app=app, headers={"Authorization": f"Token {world['token']}"},
                           checks=[not_a_server_error])


def test_the_document_is_the_served_one(world, client):
    """The tests above use the document /api/schema/ serves (to logged-in users)."""
    client.force_login(Token.objects.get(key=world["token"]).user)
    served = client.get("/api/schema/", {"format": "json"})
    assert served.status_code == 200
    assert json.loads(served.content)["paths"].keys() == openapi_document()["paths"].keys()
    assert len(schema.raw_schema["paths"]) >= 20


def test_options_on_every_api_url_is_not_a_server_error(world, app):
    """Found by the tests above: OPTIONS asked DRF to describe a serializer the views do not declare."""
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {world['token']}")
    for template in schema.raw_schema["paths"]:
        path = template
        for name, ids in world["ids"].items():
            path = path.replace("{" + name + "}", str(ids[0]))
        r = api.options(path)
        assert r.status_code in (200, 401, 403, 404), (path, r.status_code)
        if r.status_code == 200:
            assert r.json()["name"] and "application/json" in r.json()["renders"]
