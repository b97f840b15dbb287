import pytest

from annotation.models import Role

from .factories import add_member, make_items, make_project, make_user


@pytest.fixture
def project(db):
    return make_project()


@pytest.fixture
def manager(project):
    return add_member(project, Role.MANAGER, "manager")


@pytest.fixture
def reviewer(project):
    return add_member(project, Role.REVIEWER, "reviewer")


@pytest.fixture
def annotator(project):
    return add_member(project, Role.ANNOTATOR, "annotator")


@pytest.fixture
def viewer(project):
    return add_member(project, Role.VIEWER, "viewer")


@pytest.fixture
def outsider(db):
    return make_user("outsider")


@pytest.fixture
def items(project):
    return make_items(project, count=3, n_steps=3)
