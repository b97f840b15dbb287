"""The REST API: authentication, permissions, every endpoint, and a full loop through it."""

import io
import json
import re

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import URLPattern, URLResolver
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import answers as core_answers
from annotation.api import urls as api_urls
from annotation.models import Answer, AuditEvent, Final, Item, Lease, Membership, Project, Role
from annotation.permissions import ANNOTATE, MANAGE, REVIEW, VIEW

from .factories import PASSWORD, add_member, full_answer, make_items, make_project, make_user, trajectory


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def url(project, rest=""):
    return f"/api/projects/{project.pk}/{rest}"


# --- authentication ---------------------------------------------------------------


def test_token_auth(db):
    user = make_user("alice")
    anon = APIClient()
    r = anon.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert r.status_code == 200
    key = r.json()["token"]
    assert Token.objects.get(user=user).key == key
    # the same token on the next request
    assert anon.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}).json()["token"] == key

    authed = APIClient()
    authed.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert authed.get("/api/projects/").status_code == 200

    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/projects/").status_code == 401


def test_token_wrong_password(db):
    make_user("bob")
    r = APIClient().post("/api/auth/token/", {"username": "bob", "password": "nope"}, format="json")
    assert r.status_code == 400
    assert "detail" in r.json() and r.json()["errors"]
    assert not Token.objects.exists()


def test_anonymous_gets_401(project, items):
    anon = APIClient()
    for path in ["/api/projects/", "/api/kinds/", url(project), url(project, "items/"), url(project, "stats/"),
                 url(project, "audit/")]:
        r = anon.get(path)
        assert r.status_code == 401, path
        assert r["WWW-Authenticate"].startswith("Token")
    assert anon.post(url(project, "next/")).status_code == 401


# --- the capability declarations -------------------------------------------------------


def _api_patterns(patterns=None, prefix=""):
    for p in patterns if patterns is not None else api_urls.urlpatterns:
        if isinstance(p, URLResolver):
            yield from _api_patterns(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def test_every_api_view_declares_its_capability():
    known = {None, VIEW, ANNOTATE, REVIEW, MANAGE}
    for route, pattern in _api_patterns():
        cls = pattern.callback.cls
        assert hasattr(cls, "required_capability"), route
        required = cls.required_capability
        values = set(required.values()) if isinstance(required, dict) else {required}
        assert values <= known, route
        if route.startswith("projects/<int:project_id>/"):
            assert None not in values, route
            if isinstance(required, dict):
                methods = {m.upper() for m in cls.http_method_names if hasattr(cls, m) and m not in ("options", "head")}
                assert methods <= set(required), route


def _project_routes():
    """(path, methods) for every API URL inside a project, with ids filled in (999999 for inner objects)."""
    out = []
    for route, pattern in _api_patterns():
        if not route.startswith("projects/<int:project_id>/"):
            continue
        cls = pattern.callback.cls
        methods = [m for m in ("get", "post", "patch", "delete") if hasattr(cls, m)]
        out.append((route, methods))
    return out


@pytest.mark.parametrize("route,methods", _project_routes())
def test_outsider_gets_404_everywhere(route, methods, project, items, outsider):
    client = client_for(outsider)
    path = "/api/" + re.sub(r"<int:project_id>", str(project.pk), route)
    path = re.sub(r"<int:\w+>", str(items[0].pk), path)
    for method in methods:
        r = getattr(client, method)(path, {}, format="json") if method != "get" else client.get(path)
        assert r.status_code == 404, (method, path)


@pytest.mark.parametrize("route,methods", _project_routes())
def test_viewer_gets_403_where_view_is_not_enough(route, methods, project, items, viewer):
    cls = next(p.callback.cls for r, p in _api_patterns() if r == route)
    client = client_for(viewer)
    path = "/api/" + re.sub(r"<int:project_id>", str(project.pk), route)
    path = re.sub(r"<int:\w+>", str(items[0].pk), path)
    for method in methods:
        required = cls.required_capability
        capability = required.get(method.upper()) if isinstance(required, dict) else required
        r = getattr(client, method)(path, {}, format="json") if method != "get" else client.get(path)
        if capability == VIEW:
            assert r.status_code != 403, (method, path)
        else:
            assert r.status_code == 403, (method, path)


def test_missing_project_is_404_even_for_superuser(db):
    admin = make_user("root", is_superuser=True, is_staff=True)
    assert client_for(admin).get("/api/projects/424242/").status_code == 404


# --- token calls: the caller's membership is read with the token -------------------------


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def test_token_calls_answer_by_membership(project, items, annotator, viewer, outsider):
    """The token lookup also reads the caller's role in the URL's project; the answers are the same as
    for a session: 404 for non-members, 403 for a role that may not, the call itself for one that may."""
    assert token_client(annotator).post(url(project, "next/")).status_code == 200
    assert token_client(viewer).post(url(project, "next/")).status_code == 403
    assert token_client(viewer).get(url(project)).status_code == 200
    assert token_client(outsider).post(url(project, "next/")).status_code == 404
    assert token_client(outsider).get(url(project)).status_code == 404
    for bad in ("0", "424242", str(2**63), str(10**30)):  # no such project, or no such id at all
        assert token_client(annotator).get(f"/api/projects/{bad}/").status_code == 404, bad
    # the role is read on every call: a removed member is a stranger on the next one
    Membership.objects.filter(project=project, user=annotator).delete()
    assert token_client(annotator).post(url(project, "next/")).status_code == 404
    # an unknown token is still 401 on a project URL, and an inactive user's token too
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.post(url(project, "next/")).status_code == 401
    viewer.is_active = False
    viewer.save()
    assert token_client(viewer).get(url(project)).status_code == 401


def test_token_calls_of_a_site_admin(project, items):
    """Site admins act as managers in every project, members or not."""
    admin = make_user("root", is_superuser=True, is_staff=True)
    r = token_client(admin).post(url(project, "next/"))
    assert r.status_code == 200 and r.json()["answers"] == []
    assert token_client(admin).patch(url(project), {"guidelines": "New."}, format="json").status_code == 200
    assert token_client(admin).get("/api/projects/424242/").status_code == 404


def test_the_review_loop_through_a_token_reads_little(project, items, annotator, django_assert_max_num_queries):
    """Each call of the review loop reads the token and the membership in one statement, and the submit
    reads the item with its payload under the lock it takes anyway. A guard against a query creeping back
    into the path every answer takes (counts include BEGIN and COMMIT, or savepoints, where the backend
    sends them). On PostgreSQL the claim reads the item with its payload in the statement that takes the
    lease, and the submit writes the answer, the lease, the audit event and the count in one statement."""
    c = token_client(annotator)
    claim, answer = (6, 9) if connection.vendor == "postgresql" else (7, 11)
    with django_assert_max_num_queries(claim):
        r = c.post(url(project, "next/"))
    assert r.status_code == 200
    item = Item.objects.get(pk=r.json()["id"])
    with django_assert_max_num_queries(answer):
        r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": full_answer(item)}, format="json")
    assert r.status_code == 201
    # the submit and the claim of the next item in one call: no more than the two calls read
    item = Item.objects.get(pk=c.post(url(project, "next/")).json()["id"])
    with django_assert_max_num_queries(answer + claim - 1):  # the token and membership are read once
        r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), {"data": full_answer(item)}, format="json")
    assert r.status_code == 201 and r.json()["next_item"]["id"] != item.pk


def test_next_returns_the_callers_draft_with_the_item(project, items, annotator):
    """An annotator who comes back to the item they hold gets their draft with it (read with the payload)."""
    c = token_client(annotator)
    item = c.post(url(project, "next/")).json()
    partial = {"steps": [{"step": 0, "verdict": "agree"}], "notes": "half done"}
    assert c.post(url(project, f"items/{item['id']}/answer/"), {"data": partial, "draft": True},
                  format="json").status_code == 200
    again = c.post(url(project, "next/")).json()
    assert again["id"] == item["id"]
    assert [(a["status"], a["data"]["notes"]) for a in again["answers"]] == [("draft", "half done")]


def test_submit_to_an_item_it_cannot_see_is_404(project, items, annotator):
    """The submit finds its item under the row lock: another project's item, an item still being imported
    and an id no row can have are 404, and nothing is stored."""
    c = token_client(annotator)
    other = make_project("Other")
    foreign = make_items(other, count=1)[0]
    staged = items[1]
    Item.objects.filter(pk=staged.pk).update(state=Item.State.STAGED)
    for item_id, item in ((foreign.pk, foreign), (staged.pk, staged), (2**63, None), (10**30, None)):
        body = {"data": full_answer(item or items[0])}
        r = c.post(url(project, f"items/{item_id}/answer/"), body, format="json")
        assert r.status_code == 404 and r.json()["detail"] == "No such item in this project.", item_id
    assert not Answer.objects.exists()
    # a body of the wrong shape is refused before the item is looked up
    assert c.post(url(project, f"items/{foreign.pk}/answer/"), {"time_spent_ms": -3}, format="json").status_code == 400


# --- projects -----------------------------------------------------------------------


def test_project_list_shows_only_member_projects(project, annotator):
    other = make_project("Other")
    r = client_for(annotator).get("/api/projects/")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 1
    row = body["results"][0]
    assert row["id"] == project.pk and row["role"] == "annotator"
    assert row["capabilities"] == ["view", "annotate"]
    admin = make_user("root", is_superuser=True)
    ids = {p["id"] for p in client_for(admin).get("/api/projects/").json()["results"]}
    assert ids == {project.pk, other.pk}


def test_create_project_staff_only(db):
    staff = make_user("staff", is_staff=True)
    plain = make_user("plain")
    body = {"name": "Trajectories", "kind": "lfm_trajectory", "answers_per_item": 2, "guidelines": "Be careful."}
    assert client_for(plain).post("/api/projects/", body, format="json").status_code == 403
    r = client_for(staff).post("/api/projects/", body, format="json")
    assert r.status_code == 201, r.content
    data = r.json()
    project = Project.objects.get(pk=data["id"])
    assert data["role"] == "manager" and project.answers_per_item == 2 and project.created_by == staff
    assert Membership.objects.get(project=project, user=staff).role == Role.MANAGER
    assert AuditEvent.objects.filter(project=project, verb="project.created").exists()


def test_create_project_validation(db):
    staff = make_user("staff", is_staff=True)
    r = client_for(staff).post("/api/projects/", {"name": "X", "kind": "nope", "answers_per_item": 0}, format="json")
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"kind", "answers_per_item"} <= fields
    assert not Project.objects.exists()


def test_project_detail_and_patch(project, manager, annotator, outsider):
    assert client_for(annotator).get(url(project)).json()["name"] == "Demo"
    assert client_for(annotator).patch(url(project), {"name": "X"}, format="json").status_code == 403
    assert client_for(outsider).patch(url(project), {"name": "X"}, format="json").status_code == 404

    r = client_for(manager).patch(url(project), {"guidelines": "New rules", "lease_minutes": 10}, format="json")
    assert r.status_code == 200, r.content
    project.refresh_from_db()
    assert project.guidelines == "New rules" and project.lease_minutes == 10 and project.guidelines_version == 2
    assert r.json()["guidelines_version"] == 2
    event = AuditEvent.objects.get(project=project, verb="project.settings")
    assert event.before == {"guidelines": "", "lease_minutes": 30, "guidelines_version": 1}
    assert event.after == {"guidelines": "New rules", "lease_minutes": 10, "guidelines_version": 2}

    # same values again: no change, no audit, no version bump
    client_for(manager).patch(url(project), {"guidelines": "New rules"}, format="json")
    project.refresh_from_db()
    assert project.guidelines_version == 2
    assert AuditEvent.objects.filter(project=project, verb="project.settings").count() == 1


def test_project_patch_rejects_bad_values(project, manager):
    c = client_for(manager)
    r = c.patch(url(project), {"answers_per_item": 50}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "answers_per_item"
    r = c.patch(url(project), {"kind": "something_else"}, format="json")
    assert r.status_code == 400 and "kind" in r.json()["detail"]
    r = c.patch(url(project), {"guidelines_version": 7}, format="json")
    assert r.status_code == 400
    project.refresh_from_db()
    assert project.answers_per_item == 1 and project.guidelines_version == 1


def test_stats(project, items, viewer, annotator):
    core_answers.submit(items[0], annotator, full_answer(items[0]))
    r = client_for(viewer).get(url(project, "stats/"))
    assert r.status_code == 200
    stats = r.json()
    assert stats["items"] == 3 and stats["answers"] == 1 and stats["final"] == 1
    assert stats["annotators"][0]["username"] == "annotator"


# --- members --------------------------------------------------------------------------


def test_members_crud_and_audit(project, manager, reviewer):
    c = client_for(manager)
    r = c.get(url(project, "members/"))
    assert r.status_code == 200
    assert {m["username"] for m in r.json()["results"]} == {"manager", "reviewer"}

    make_user("newbie")
    r = c.post(url(project, "members/"), {"username": "newbie", "role": "annotator"}, format="json")
    assert r.status_code == 201, r.content
    mid = r.json()["id"]
    # adding again changes the role
    r = c.post(url(project, "members/"), {"username": "newbie", "role": "viewer"}, format="json")
    assert r.status_code == 200 and r.json()["role"] == "viewer" and r.json()["id"] == mid

    r = c.patch(url(project, f"members/{mid}/"), {"role": "reviewer"}, format="json")
    assert r.status_code == 200 and Membership.objects.get(pk=mid).role == Role.REVIEWER
    event = AuditEvent.objects.filter(project=project, verb="member.role").order_by("at", "pk").last()
    assert event.before == {"user": "newbie", "role": "viewer"}
    assert event.after == {"user": "newbie", "role": "reviewer"}

    assert c.delete(url(project, f"members/{mid}/")).status_code == 204
    assert not Membership.objects.filter(pk=mid).exists()
    assert AuditEvent.objects.filter(project=project, verb="member.removed").exists()
    assert c.delete(url(project, f"members/{mid}/")).status_code == 404


def test_members_validation(project, manager):
    c = client_for(manager)
    r = c.post(url(project, "members/"), {"username": "ghost", "role": "annotator"}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "username"
    mid = Membership.objects.get(user=manager).pk
    r = c.patch(url(project, f"members/{mid}/"), {"role": "boss"}, format="json")
    assert r.status_code == 400


def test_last_manager_cannot_be_demoted_or_removed(project, manager):
    c = client_for(manager)
    mine = Membership.objects.get(user=manager, project=project)
    r = c.patch(url(project, f"members/{mine.pk}/"), {"role": "annotator"}, format="json")
    assert r.status_code == 409
    assert c.post(url(project, "members/"), {"username": "manager", "role": "viewer"},
                  format="json").status_code == 409
    assert c.delete(url(project, f"members/{mine.pk}/")).status_code == 409
    mine.refresh_from_db()
    assert mine.role == Role.MANAGER

    second = add_member(project, Role.MANAGER, "second")
    assert c.delete(url(project, f"members/{mine.pk}/")).status_code == 204
    assert Membership.objects.filter(project=project, role=Role.MANAGER).get().user == second


def test_members_need_manage(project, reviewer, manager):
    mid = Membership.objects.get(user=manager).pk
    c = client_for(reviewer)
    assert c.get(url(project, "members/")).status_code == 403
    assert c.delete(url(project, f"members/{mid}/")).status_code == 403
    assert Membership.objects.filter(pk=mid).exists()


def test_member_of_other_project_is_404(project, manager):
    other = make_project("Other")
    stranger = add_member(other, Role.ANNOTATOR, "stranger")
    mid = Membership.objects.get(user=stranger).pk
    assert client_for(manager).patch(url(project, f"members/{mid}/"), {"role": "viewer"},
                                     format="json").status_code == 404


# --- items ------------------------------------------------------------------------------


def test_item_list_thin_rows_and_filters(project, viewer):
    items = make_items(project, count=4)
    Item.objects.filter(pk=items[3].pk).update(state=Item.State.STAGED)
    Item.objects.filter(pk=items[1].pk).update(state=Item.State.FINAL)
    c = client_for(viewer)
    r = c.get(url(project, "items/"))
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 3  # the staged item is invisible
    assert "payload" not in body["results"][0]
    assert [row["id"] for row in body["results"]] == [items[0].pk, items[1].pk, items[2].pk]
    assert [row["id"] for row in c.get(url(project, "items/?state=final")).json()["results"]] == [items[1].pk]
    rows = c.get(url(project, f"items/?external_id={items[2].external_id}")).json()["results"]
    assert [row["id"] for row in rows] == [items[2].pk]
    assert c.get(url(project, "items/?state=staged")).status_code == 400
    page = c.get(url(project, "items/?page_size=2&page=2")).json()
    assert page["count"] == 3 and len(page["results"]) == 1 and page["previous"]


def test_item_detail_answers_by_role(project, items, annotator, reviewer, viewer):
    project.answers_per_item = 2
    project.save()
    other = add_member(project, Role.ANNOTATOR, "other")
    item = items[0]
    core_answers.submit(item, annotator, full_answer(item, "agree"))
    core_answers.submit(item, other, full_answer(item, "disagree"))

    mine = client_for(annotator).get(url(project, f"items/{item.pk}/")).json()
    assert mine["payload"]["instruction"] == "Put the apple in the fridge"
    assert mine["prediction"]["model_version"] == "lfm-test"
    assert [a["username"] for a in mine["answers"]] == ["annotator"]
    assert mine["agreement"] is None

    full = client_for(reviewer).get(url(project, f"items/{item.pk}/")).json()
    assert sorted(a["username"] for a in full["answers"]) == ["annotator", "other"]
    assert full["agreement"]["answers"] == 2

    assert client_for(viewer).get(url(project, f"items/{item.pk}/")).json()["answers"] == []


def test_item_of_other_project_is_404(project, items, viewer):
    other = make_project("Other")
    foreign = make_items(other, count=1)[0]
    assert client_for(viewer).get(url(project, f"items/{foreign.pk}/")).status_code == 404


# --- queue and answers -----------------------------------------------------------------------


def test_next_claims_and_resumes(project, items, annotator):
    c = client_for(annotator)
    r = c.post(url(project, "next/"))
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["id"] in {i.pk for i in items}
    assert body["payload"]["steps"] and body["prediction"]["data"]["steps"]
    assert body["lease"]["expires_at"]
    assert Lease.objects.filter(item_id=body["id"], user=annotator).exists()
    assert c.post(url(project, "next/")).json()["id"] == body["id"]


def test_next_is_204_when_nothing_is_left(project, items, annotator):
    c = client_for(annotator)
    for _ in items:
        item_id = c.post(url(project, "next/")).json()["id"]
        item = Item.objects.get(pk=item_id)
        assert c.post(url(project, f"items/{item_id}/answer/"), {"data": full_answer(item)},
                      format="json").status_code == 201
    r = c.post(url(project, "next/"))
    assert r.status_code == 204 and not r.content


def test_next_needs_annotate(project, items, viewer):
    assert client_for(viewer).post(url(project, "next/")).status_code == 403
    assert not Lease.objects.exists()


def test_submit_and_double_submit(project, items, annotator):
    c = client_for(annotator)
    item = items[0]
    body = {"data": full_answer(item), "time_spent_ms": 1234}
    r = c.post(url(project, f"items/{item.pk}/answer/"), body, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["status"] == "submitted" and r.json()["time_spent_ms"] == 1234
    r2 = c.post(url(project, f"items/{item.pk}/answer/"), body, format="json")
    assert r2.status_code == 200 and r2.json()["id"] == r.json()["id"]
    assert Answer.objects.filter(item=item).count() == 1
    item.refresh_from_db()
    assert item.answer_count == 1 and item.state == Item.State.FINAL


def test_draft_then_submit(project, items, annotator):
    c = client_for(annotator)
    item = items[0]
    partial = {"steps": [{"step": 0, "verdict": "agree"}], "notes": "half done"}
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": partial, "draft": True}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "draft"
    # a partial answer cannot be submitted
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": partial}, format="json")
    assert r.status_code == 400
    assert r.json()["errors"] and r.json()["errors"][0]["field"] == "steps"
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": full_answer(item)}, format="json")
    assert r.status_code == 201
    assert Answer.objects.get(item=item, user=annotator).status == Answer.Status.SUBMITTED


def test_answer_errors(project, items, annotator):
    c = client_for(annotator)
    item = items[0]
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": {"steps": [{"step": 99, "verdict": "agree"}]}},
               format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "steps.99.step"
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"data": {"bogus": 1}}, format="json")
    assert r.status_code == 400
    r = c.post(url(project, f"items/{item.pk}/answer/"), {"time_spent_ms": -3}, format="json")
    assert {e["field"] for e in r.json()["errors"]} == {"data", "time_spent_ms"}
    assert not Answer.objects.exists()


def test_answer_to_a_full_item_is_409(project, items, annotator):
    other = add_member(project, Role.ANNOTATOR, "other")
    item = items[0]
    core_answers.submit(item, other, full_answer(item))
    r = client_for(annotator).post(url(project, f"items/{item.pk}/answer/"), {"data": full_answer(item)},
                                   format="json")
    assert r.status_code == 409 and r.json()["detail"]
    assert Answer.objects.filter(item=item, status=Answer.Status.SUBMITTED).count() == 1


def test_answer_needs_annotate(project, items, viewer):
    r = client_for(viewer).post(url(project, f"items/{items[0].pk}/answer/"), {"data": full_answer(items[0])},
                                format="json")
    assert r.status_code == 403
    assert not Answer.objects.exists()


def test_submit_with_next_claims_the_next_item_in_the_same_call(project, items, annotator):
    """?next=1: the submit's response carries the next item, claimed as POST next/ claims it, and null
    once nothing is left; every item is answered once, and no lease is left at the end."""
    c = token_client(annotator)
    item = c.post(url(project, "next/")).json()
    seen = []
    while item is not None:
        seen.append(item["id"])
        full = full_answer(Item.objects.get(pk=item["id"]))
        r = c.post(url(project, f"items/{item['id']}/answer/?next=1"), {"data": full}, format="json")
        assert r.status_code == 201, r.content
        body = r.json()
        assert body["item_id"] == item["id"] and body["status"] == "submitted"
        item = body["next_item"]
        if item is not None:
            assert item["id"] not in seen and item["lease"]["expires_at"] and item["payload"]["steps"]
            assert list(Lease.objects.filter(user=annotator).values_list("item_id", flat=True)) == [item["id"]]
    assert sorted(seen) == sorted(i.pk for i in items)
    assert Answer.objects.filter(user=annotator, status=Answer.Status.SUBMITTED).count() == len(items)
    assert not Lease.objects.exists()
    # without the parameter the answer comes alone, as before
    r = c.post(url(project, f"items/{seen[0]}/answer/"), {"data": full_answer(items[0])}, format="json")
    assert "next_item" not in r.json()


def test_submit_with_next_again_returns_the_item_already_claimed(project, items, annotator):
    """Sending the same submit again (a retry after a lost response) stores nothing new and hands back the
    item the first call claimed, not a second one."""
    c = token_client(annotator)
    first = c.post(url(project, "next/")).json()
    body = {"data": full_answer(Item.objects.get(pk=first["id"]))}
    r1 = c.post(url(project, f"items/{first['id']}/answer/?next=true"), body, format="json")
    r2 = c.post(url(project, f"items/{first['id']}/answer/?next=true"), body, format="json")
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["next_item"]["id"] == r2.json()["next_item"]["id"] != first["id"]
    assert Answer.objects.filter(user=annotator).count() == 1 and Lease.objects.filter(user=annotator).count() == 1


def test_submit_with_next_refusals_claim_nothing(project, items, annotator):
    """A draft with ?next=1, a bad value of next, an invalid answer and a full item are refused as they
    were, and none of them claims an item or stores anything."""
    other = add_member(project, Role.ANNOTATOR, "other")
    c = token_client(annotator)
    item = items[0]
    partial = {"steps": [{"step": 0, "verdict": "agree"}], "notes": ""}
    r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), {"data": partial, "draft": True}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "next"
    r = c.post(url(project, f"items/{item.pk}/answer/?next=maybe"), {"data": full_answer(item)}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "next"
    r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), {"data": partial}, format="json")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "steps"
    assert not Answer.objects.exists() and not Lease.objects.exists()
    core_answers.submit(item, other, full_answer(item))  # N = 1: the item is full
    r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), {"data": full_answer(item)}, format="json")
    assert r.status_code == 409
    assert not Lease.objects.exists() and not Answer.objects.filter(user=annotator).exists()


def test_submit_with_next_keeps_the_answer_when_the_claim_fails(project, items, annotator, monkeypatch):
    """The answer is committed before the claim: a database that fails between the two answers 503 and
    keeps the answer, and the same submit again stores nothing new and brings the next item."""
    from django.db import OperationalError

    from annotation import queue

    c = token_client(annotator)
    item = items[0]
    body = {"data": full_answer(item)}
    real = queue.next_item

    def down(*args, **kwargs):
        raise OperationalError("the connection to the server was lost")

    monkeypatch.setattr(queue, "next_item", down)
    r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), body, format="json")
    assert r.status_code == 503 and r["Retry-After"]
    assert Answer.objects.filter(item=item, user=annotator, status=Answer.Status.SUBMITTED).count() == 1
    monkeypatch.setattr(queue, "next_item", real)
    r = c.post(url(project, f"items/{item.pk}/answer/?next=1"), body, format="json")
    assert r.status_code == 200 and r.json()["next_item"]["id"] in {i.pk for i in items[1:]}
    assert Answer.objects.filter(user=annotator).count() == 1


def test_skip_releases_the_lease(project, items, annotator):
    c = client_for(annotator)
    item_id = c.post(url(project, "next/")).json()["id"]
    assert c.post(url(project, f"items/{item_id}/skip/")).status_code == 204
    assert not Lease.objects.filter(item_id=item_id, user=annotator).exists()


# --- review -------------------------------------------------------------------------------


@pytest.fixture
def disagreement(project, items, annotator):
    """Two answers on items[0] that disagree on every step (N=2): the item is DONE."""
    project.answers_per_item = 2
    project.save()
    other = add_member(project, Role.ANNOTATOR, "other")
    item = items[0]
    core_answers.submit(item, annotator, full_answer(item, "agree"))
    core_answers.submit(item, other, full_answer(item, "disagree"))
    item.refresh_from_db()
    assert item.state == Item.State.DONE
    return item


def test_disagreements(project, disagreement, reviewer, annotator):
    r = client_for(reviewer).get(url(project, "disagreements/"))
    assert r.status_code == 200
    assert [row["id"] for row in r.json()["results"]] == [disagreement.pk]
    assert r.json()["results"][0]["final_method"] is None
    assert client_for(annotator).get(url(project, "disagreements/")).status_code == 403


def test_disagreements_ties_before_majorities(project, items, reviewer):
    project.answers_per_item = 3
    project.save()
    a, b, c = (add_member(project, Role.ANNOTATOR, name) for name in ("a1", "a2", "a3"))
    majority, tie = items[0], items[1]
    for user, verdict in ((a, "agree"), (b, "agree"), (c, "disagree")):
        core_answers.submit(majority, user, full_answer(majority, verdict))
    for user, verdict in ((a, "agree"), (b, "disagree"), (c, "unsure")):
        core_answers.submit(tie, user, full_answer(tie, verdict))
    rows = client_for(reviewer).get(url(project, "disagreements/")).json()["results"]
    assert [(r["id"], r["state"], r["final_method"]) for r in rows] == [
        (tie.pk, "done", None), (majority.pk, "final", "majority")]


def test_adjudicate(project, disagreement, reviewer, annotator):
    item = disagreement
    body = {"data": {"steps": [{"step": i, "verdict": None, "label": True} for i in range(item.step_count)]}}
    assert client_for(annotator).post(url(project, f"items/{item.pk}/adjudicate/"), body,
                                      format="json").status_code == 403
    partial = {"data": {"steps": [{"step": 0, "label": True}]}}
    assert client_for(reviewer).post(url(project, f"items/{item.pk}/adjudicate/"), partial,
                                     format="json").status_code == 400
    r = client_for(reviewer).post(url(project, f"items/{item.pk}/adjudicate/"), body, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["method"] == "adjudicated" and r.json()["decided_by"] == "reviewer"
    item.refresh_from_db()
    assert item.state == Item.State.FINAL
    assert Final.objects.get(item=item).method == Final.Method.ADJUDICATED
    assert client_for(reviewer).get(url(project, "disagreements/")).json()["count"] == 0


def test_review_reject_reopens(project, items, annotator, reviewer):
    item = items[0]
    answer = core_answers.submit(item, annotator, full_answer(item)).answer
    path = url(project, f"answers/{answer.pk}/review/")
    assert client_for(annotator).post(path, {"decision": "reject"}, format="json").status_code == 403
    assert client_for(reviewer).post(path, {"decision": "maybe"}, format="json").status_code == 400
    r = client_for(reviewer).post(path, {"decision": "reject", "comment": "step 2 is wrong"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "rejected" and r.json()["reviewed_by"] == "reviewer"
    item.refresh_from_db()
    assert item.state == Item.State.OPEN and item.answer_count == 0
    event = AuditEvent.objects.get(verb="answer.rejected")
    assert event.after["comment"] == "step 2 is wrong"
    # a second decision on a rejected answer conflicts
    assert client_for(reviewer).post(path, {"decision": "accept"}, format="json").status_code == 409


def test_review_accept(project, items, annotator, reviewer):
    answer = core_answers.submit(items[0], annotator, full_answer(items[0])).answer
    r = client_for(reviewer).post(url(project, f"answers/{answer.pk}/review/"), {"decision": "accept"},
                                  format="json")
    assert r.status_code == 200 and r.json()["status"] == "submitted" and r.json()["reviewed_by"] == "reviewer"


def test_review_answer_of_other_project_is_404(project, reviewer):
    other = make_project("Other")
    item = make_items(other, count=1)[0]
    someone = add_member(other, Role.ANNOTATOR, "someone")
    answer = core_answers.submit(item, someone, full_answer(item)).answer
    r = client_for(reviewer).post(url(project, f"answers/{answer.pk}/review/"), {"decision": "reject"},
                                  format="json")
    assert r.status_code == 404
    answer.refresh_from_db()
    assert answer.status == Answer.Status.SUBMITTED


# --- audit and kinds ---------------------------------------------------------------------


def test_audit_log(project, manager, reviewer):
    c = client_for(manager)
    c.patch(url(project), {"name": "Renamed"}, format="json")
    c.patch(url(project), {"description": "About"}, format="json")
    r = c.get(url(project, "audit/"))
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 2 and body["results"][0]["after"] == {"description": "About"}
    assert body["results"][0]["actor"] == "manager"
    assert c.get(url(project, "audit/?verb=member.role")).json()["count"] == 0
    assert client_for(reviewer).get(url(project, "audit/")).status_code == 403


def test_kinds_publish_json_schemas(db):
    user = make_user()
    r = client_for(user).get("/api/kinds/")
    assert r.status_code == 200
    lfm = next(k for k in r.json() if k["name"] == "lfm_trajectory")
    assert "steps" in lfm["payload_schema"]["properties"]
    assert "steps" in lfm["feedback_schema"]["properties"]
    assert "model_version" in lfm["prediction_schema"]["required"]
    assert {"jsonl", "rollout"} <= set(lfm["import_formats"])
    assert "lfm_steps" in {f["name"] for f in lfm["export_formats"]}
    assert client_for(user).get("/api/kinds/lfm_trajectory/").json()["name"] == "lfm_trajectory"
    assert client_for(user).get("/api/kinds/nope/").status_code == 404


# --- the OpenAPI document ---------------------------------------------------------------------


def _logged_in(db):
    c = APIClient()
    c.force_authenticate(make_user())
    return c


def test_schema_needs_a_login(db):
    assert APIClient().get("/api/schema/", {"format": "json"}).status_code == 401


def test_schema_endpoint_and_validation(db, tmp_path):
    r = _logged_in(db).get("/api/schema/", {"format": "json"})
    assert r.status_code == 200
    schema = json.loads(r.content)
    assert "/api/projects/{project_id}/next/" in schema["paths"]
    out = tmp_path / "schema.yaml"
    # raises on any warning or an invalid document
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.stat().st_size > 0


def test_schema_documents_capabilities(db):
    r = _logged_in(db).get("/api/schema/", {"format": "json"})
    op = json.loads(r.content)["paths"]["/api/projects/{project_id}/audit/"]["get"]
    assert "`manage`" in op["description"]


# --- imports ----------------------------------------------------------------------------------


def jsonl(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def upload(client, project, content: bytes, name="batch.jsonl", **extra):
    f = io.BytesIO(content)
    f.name = name
    return client.post(url(project, "imports/"), {"file": f, **extra}, format="multipart")


@pytest.mark.django_db(transaction=True)
def test_import_reports_errors_by_line_and_field():
    from annotation.importing import run_import

    project = make_project()
    manager = add_member(project, Role.MANAGER, "manager")
    c = client_for(manager)
    bad = trajectory(2, tid="b")
    del bad["instruction"]
    r = upload(c, project, jsonl(trajectory(2, tid="a"), bad) + b"{not json\n")
    assert r.status_code == 202, r.content
    job_id = r.json()["id"]
    run_import(job_id)
    r = c.get(url(project, f"imports/{job_id}/"))
    assert r.status_code == 200
    job = r.json()
    assert job["status"] == "failed" and job["error_count"] == 2
    assert job["errors"][0] == {"line": 2, "field": "instruction", "message": "Field required"}
    assert job["errors"][1]["line"] == 3 and job["errors"][1]["field"] == "(json)"
    assert not Item.objects.filter(project=project).exists()
    listed = c.get(url(project, "imports/")).json()
    assert [j["id"] for j in listed["results"]] == [job_id] and "errors" not in listed["results"][0]


def test_import_rejected_uploads(project, manager, annotator):
    c = client_for(manager)
    r = upload(c, project, b"")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "file"
    r = upload(c, project, jsonl(trajectory(2)), format="xml")
    assert r.status_code == 400 and "xml" in r.json()["detail"]
    r = c.post(url(project, "imports/"), {}, format="multipart")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "file"
    assert c.post(url(project, "imports/"), {"file": "inline"}, format="json").status_code == 415
    assert upload(client_for(annotator), project, jsonl(trajectory(2))).status_code == 403
    assert not project.imports.exists()


def test_import_of_other_project_is_404(project, manager):
    other = make_project("Other")
    from annotation.models import ImportJob

    job = ImportJob.objects.create(project=other, filename="x.jsonl", path="nowhere")
    assert client_for(manager).get(url(project, f"imports/{job.pk}/")).status_code == 404


# --- exports ----------------------------------------------------------------------------------


def streamed(response) -> bytes:
    assert response.streaming
    return b"".join(response.streaming_content)


def test_export_formats_and_filters(project, items, manager, annotator):
    core_answers.submit(items[0], annotator, full_answer(items[0]))
    c = client_for(manager)
    r = c.get(url(project, "export/"), {"format": "jsonl", "final_only": "1"})
    assert r.status_code == 200 and r["Content-Type"].startswith("application/x-ndjson")
    assert "attachment" in r["Content-Disposition"]
    records = [json.loads(line) for line in streamed(r).splitlines()]
    assert [rec["id"] for rec in records] == [items[0].pk]
    assert records[0]["answers"][0]["user"] == "annotator" and records[0]["final"]["method"] == "unanimous"

    # without filters every live item; the default format is jsonl
    assert len(streamed(c.get(url(project, "export/"))).splitlines()) == 3

    r = c.get(url(project, "export/"), {"format": "csv"})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    assert streamed(r).splitlines()[0].startswith(b"item_id,external_id,step")

    r = c.get(url(project, "export/"), {"format": "lfm_steps", "annotator": "annotator"})
    rows = [json.loads(line) for line in streamed(r).splitlines()]
    assert {row["item_id"] for row in rows} == {items[0].pk} and len(rows) == items[0].step_count


def test_export_rejects_bad_requests(project, items, manager, annotator):
    c = client_for(manager)
    r = c.get(url(project, "export/"), {"format": "xml"})
    assert r.status_code == 400 and "xml" in r.json()["detail"]
    r = c.get(url(project, "export/"), {"since": "yesterday"})
    assert r.status_code == 400 and "since" in r.json()["detail"]
    r = c.get(url(project, "export/"), {"annotator": "ghost"})
    assert r.status_code == 400
    assert client_for(annotator).get(url(project, "export/")).status_code == 403


# --- the whole loop through the API ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_full_loop_through_the_api():
    from annotation.importing import run_import

    staff = make_user("lead", is_staff=True)
    make_user("ann")
    make_user("rev")
    lead = APIClient()
    key = lead.post("/api/auth/token/", {"username": "lead", "password": PASSWORD}, format="json").json()["token"]
    lead.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    r = lead.post("/api/projects/", {"name": "Loop", "kind": "lfm_trajectory", "answers_per_item": 1}, format="json")
    assert r.status_code == 201
    project = Project.objects.get(pk=r.json()["id"])
    assert project.created_by == staff
    for username, role in (("ann", "annotator"), ("rev", "reviewer")):
        assert lead.post(url(project, "members/"), {"username": username, "role": role},
                         format="json").status_code == 201

    lines = jsonl(trajectory(3, tid="traj-1"), trajectory(2, tid="traj-2"))
    r = upload(lead, project, lines, name="two.jsonl", format="jsonl")
    assert r.status_code == 202, r.content
    assert r.json()["status"] == "queued"
    job_id = r.json()["id"]
    run_import(job_id)
    job = lead.get(url(project, f"imports/{job_id}/")).json()
    assert job["status"] == "succeeded" and job["items_imported"] == 2 and job["steps_imported"] == 5
    assert job["progress"] == 1.0 and job["errors"] == []
    rows = lead.get(url(project, "items/")).json()
    assert sorted(row["external_id"] for row in rows["results"]) == ["traj-1", "traj-2"]

    ann = APIClient()
    ann.credentials(HTTP_AUTHORIZATION="Token " + ann.post(
        "/api/auth/token/", {"username": "ann", "password": PASSWORD}, format="json").json()["token"])
    claimed = ann.post(url(project, "next/"))
    assert claimed.status_code == 200
    item = claimed.json()
    answer = {"steps": [{"step": i, "verdict": "agree"} for i in range(item["step_count"])], "notes": "fine"}
    first = ann.post(url(project, f"items/{item['id']}/answer/"), {"data": answer, "time_spent_ms": 5000},
                     format="json")
    assert first.status_code == 201
    again = ann.post(url(project, f"items/{item['id']}/answer/"), {"data": answer, "time_spent_ms": 5000},
                     format="json")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert Answer.objects.filter(item_id=item["id"]).count() == 1

    stats = ann.get(url(project, "stats/")).json()
    assert stats["items"] == 2 and stats["answers"] == 1 and stats["final"] == 1 and stats["open"] == 1
    assert stats["annotators"] == [{"user_id": first.json()["user_id"], "username": "ann", "answers": 1,
                                    "avg_seconds": 5.0}]

    export = lead.get(url(project, "export/"), {"format": "jsonl", "final_only": "1"})
    assert export.status_code == 200
    records = [json.loads(line) for line in streamed(export).splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["id"] == item["id"] and record["final"]["data"]["notes"] == ["fine"]
    assert [a["user"] for a in record["answers"]] == ["ann"]
    assert record["lineage"]["source_file"] == "two.jsonl"

    verbs = {e["verb"] for e in lead.get(url(project, "audit/"), {"page_size": 100}).json()["results"]}
    assert {"project.created", "member.role", "import.succeeded", "answer.submitted"} <= verbs


@pytest.mark.django_db(transaction=True)
def test_export_streams_under_asgi():
    """The production server is ASGI: the export must come back as an async stream there too."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    project = make_project()
    manager = add_member(project, Role.MANAGER, "manager")
    make_items(project, count=3)
    key = Token.objects.create(user=manager).key

    async def fetch():
        response = await AsyncClient().get(url(project, "export/"), {"format": "jsonl"},
                                           headers={"Authorization": f"Token {key}"})
        assert response.status_code == 200 and response.streaming and response.is_async
        return b"".join([chunk async for chunk in response.streaming_content])

    body = async_to_sync(fetch)()
    assert [json.loads(line)["seq"] for line in body.splitlines()] == [1, 2, 3]
