"""Getting started: register handlers, run a worker in this process, submit, wait, stop."""

from tideflow import TaskManager

tm = TaskManager("sqlite:tasks.db", max_concurrent_tasks=10)


def send_email(task):  # a sync handler runs in the worker's thread pool
    print("sending to", task.payload["to"])
    return {"sent": True}  # the task's result (JSON)


tm.use("send_email", send_email, max_retries=5, retry_interval=2)


@tm.task("resize", timeout=120)  # decorator form; an async handler runs on the event loop
async def resize(task):
    await task.aprogress("resizing", progress_percent=50)
    return {"thumbnail": task.payload["path"] + ".thumb.png"}


tm.start()  # a worker in background threads of this process
task_id = tm.submit("send_email", {"to": "a@example.com"}, priority=5, tag="mail")
resize_id = resize.submit({"path": "cat.png"}, delay=1)

print(tm.result(task_id, timeout=10))  # {'sent': True}: waits until the task has finished
info = tm.get_task(task_id)
print(info.status, info.result, info.attempt)  # completed {'sent': True} 1
print(tm.result(resize_id, timeout=10))  # {'thumbnail': 'cat.png.thumb.png'}

tm.stop()  # graceful: running attempts get time to finish
tm.close()
