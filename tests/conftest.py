import pytest
from django.db import connections

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


@pytest.fixture(autouse=True, scope="session")
def _live_servers_do_not_inherit_pooled_connections():
    """Channels' live server is a forked process. A fork copies this process's open database sockets,
    and on PostgreSQL the connection pool keeps some open between tests: both processes would then
    talk over the same socket and read each other's results. Close the pools before each fork."""
    from daphne.testing import DaphneProcess

    start = DaphneProcess.start

    def start_without_shared_sockets(self):
        for conn in connections.all(initialized_only=True):
            if getattr(conn, "pool", None) is not None:
                conn.close_pool()
        return start(self)

    DaphneProcess.start = start_without_shared_sockets
    yield
    DaphneProcess.start = start
