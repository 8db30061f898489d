"""Django's tasks framework on tideflow: ``TASKS = {"default": {"BACKEND":
"tideflow.contrib.django.TideflowBackend"}}`` and, with ``"tideflow.contrib.django"`` in
``INSTALLED_APPS``, ``manage.py tideflow_worker``. Works with Django 6 (``django.tasks``) and
with Django 5.2 plus the ``django-tasks`` backport (``pip install 'tideflow[django]'``).
How Django's task model maps onto tideflow's: :mod:`tideflow.contrib.django.backend`."""

from __future__ import annotations

from tideflow.contrib.django.backend import (
    NAME_PREFIX,
    TideflowBackend,
    close_managers,
    database_url,
    django_priority,
    tideflow_priority,
)
from tideflow.contrib.django.worker import DjangoWorker, get_backend

__all__ = [
    "NAME_PREFIX",
    "DjangoWorker",
    "TideflowBackend",
    "close_managers",
    "database_url",
    "django_priority",
    "get_backend",
    "tideflow_priority",
]
