"""The one place that imports the Django tasks API.

Django 6 ships this API as django.tasks; until the project moves to Django 6 it
comes from the django-tasks backport. Moving is this one line.
"""

from django_tasks import TaskResultStatus, default_task_backend, task  # noqa: F401
