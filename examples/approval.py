"""People in the loop: a task waits, suspended, until someone resumes or cancels it."""

import time

from tideflow import TaskManager

tm = TaskManager("sqlite:tasks.db")


@tm.task("publish_post")
def publish_post(task):
    if task.stage == 0:
        draft = f"<h1>{task.payload['title']}</h1>"
        # frees the worker's slot; no timeout or retention applies while it waits
        return task.suspend("awaiting_review", context=draft.encode())
    # stage 1: resumed by a person; the context survived the wait
    return {"published": task.context.decode()}


with tm:
    post = tm.submit("publish_post", {"title": "Release notes"})
    spam = tm.submit("publish_post", {"title": "Buy now"})
    while len(tm.get_tasks_by_status("suspended", suspend_reason="awaiting_review")) < 2:
        time.sleep(0.05)

    # later, from anywhere: another process, the CLI (tideflow tasks resume ID), the dashboard
    tm.resume_task(post, resume_reason="approved by ana")
    tm.cancel_task(spam, reason="rejected by ana")

    print(tm.result(post, timeout=10))  # {'published': '<h1>Release notes</h1>'}
    print(tm.wait(spam).status, tm.get_task(spam).error)  # permanently_failed rejected by ana
    resumed = tm.query_task_events(post, event_type="task_resumed").items[0]
    print(resumed.metadata["resume_reason"])  # approved by ana
