"""Settings of the small Django project the tests (and the README's example) run.

The database is a SQLite file next to this project unless ``TIDEFLOW_DJANGO_DATABASE`` holds a
``DATABASES`` entry as JSON (the tests point it at their own SQLite file or PostgreSQL schema).
Tasks go to tideflow through ``TideflowBackend``, in that same database.
"""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tideflow-tests-only"
DEBUG = True
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["tideflow.contrib.django", "shop"]
ROOT_URLCONF = "djproject.urls"

DATABASES = {
    "default": json.loads(os.environ["TIDEFLOW_DJANGO_DATABASE"])
    if os.environ.get("TIDEFLOW_DJANGO_DATABASE")
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE_DIR / "django-example.db")}
}

TASKS = {
    "default": {
        "BACKEND": "tideflow.contrib.django.TideflowBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"MANAGER_OPTIONS": {"poll_interval": 0.05}},
    }
}
