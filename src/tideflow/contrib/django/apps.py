"""The Django app: adds ``manage.py tideflow_worker``."""

from __future__ import annotations

from django.apps import AppConfig


class TideflowConfig(AppConfig):
    name = "tideflow.contrib.django"
    label = "tideflow"
    verbose_name = "tideflow"
