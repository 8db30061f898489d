"""Retries: backoff, which exceptions retry, and PermanentError."""

from tideflow import PermanentError, TaskManager
from tideflow.errors import TaskFailedError

tm = TaskManager("sqlite:tasks.db")
calls = {"flaky": 0}


class CardDeclined(PermanentError):
    """A failure no retry can fix: the task fails at once."""


@tm.task("flaky", max_retries=4, retry_interval=0.05, retry_backoff="exponential")
def flaky(task):
    calls["flaky"] += 1
    if calls["flaky"] < 3:
        raise ConnectionError("the service is down")  # retried after 0.05 s, 0.1 s, ...
    return "third time lucky"


@tm.task("charge", max_retries=5, retry_on=(ConnectionError,))
def charge(task):
    raise CardDeclined(f"card of order {task.payload['order']} declined")


@tm.task("parse", max_retries=5, no_retry_on=(ValueError,))
def parse(task):
    return int(task.payload)  # a ValueError is never retried


with tm:  # setup() and start() on entry; stop() and close() on exit
    print(tm.result(flaky.submit(), timeout=10))  # third time lucky
    for task_id in (charge.submit({"order": 7}), parse.submit("seven")):
        try:
            tm.result(task_id, timeout=10)
        except TaskFailedError as exc:
            final = tm.query_task_events(task_id, order="desc", limit=1).items[0]
            print(exc.task.name, exc.task.attempt, final.event_type, final.metadata)
    # charge 1 task_permanently_failed {'reason': 'no_retry',
    #     'exception': '__main__.CardDeclined', 'rule': 'PermanentError'}
    # parse 1 task_permanently_failed {'reason': 'no_retry',
    #     'exception': 'builtins.ValueError', 'rule': 'no_retry_on'}
