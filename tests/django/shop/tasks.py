"""The shop's Django tasks: plain, on another queue, with context, async, failing."""

import asyncio
from pathlib import Path

try:
    from django.tasks import task  # Django 6
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import task

from shop.errors import ShopError


@task
def add(a, b):
    return a + b


@task(queue_name="emails", priority=50)
def send_receipt(to, order=None):
    return {"sent_to": to, "order": order}


@task(takes_context=True)
def whoami(context, label):
    return {
        "label": label,
        "attempt": context.attempt,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
    }


@task
async def double_later(x):
    await asyncio.sleep(0)
    return [x, x * 2]


@task
def fail(message):
    raise ShopError(message)


@task(takes_context=True)
def flaky(context, succeed_on):
    """Fails until attempt ``succeed_on``."""
    if context.attempt < succeed_on:
        raise ShopError(f"attempt {context.attempt} failed")
    return context.attempt


@task
def write_file(path, text):
    Path(path).write_text(text)
    return len(text)
