"""Workflows: fan out to children, fan in on their results, nest, and cancel a tree."""

import time

from tideflow import TaskManager

tm = TaskManager("sqlite:tasks.db")


@tm.task("ship_order")
def ship_order(task):
    if task.stage == 0:  # fan out: one child per item; this task waits, suspended
        children = [{"name": "pack_item", "payload": item} for item in task.payload["items"]]
        return task.next(children, context=task.payload["address"].encode())
    # stage 1, fan in: each child as {"task_id", "name", "status", "result", "error"}
    boxes = [c["result"] for c in task.result if c["status"] == "completed"]
    failed = [c["name"] for c in task.result if c["status"] != "completed"]
    return {"boxes": boxes, "failed": failed, "to": task.context.decode()}


@tm.task("pack_item", max_retries=1)
def pack_item(task):
    if task.stage == 0 and task.payload == "gift":  # a child can be a workflow too
        return task.next({"name": "wrap", "payload": task.payload})
    if task.payload == "glass":
        raise ValueError("fragile item needs a person")  # a failed child is reported
    return f"box-{task.payload}"


@tm.task("wrap")
def wrap(task):
    return f"wrapped-{task.payload}"


@tm.task("slow")
def slow(task):
    return task.next([{"name": "never_served"}])  # nobody here runs never_served


with tm:
    order = tm.submit("ship_order", {"items": ["mug", "gift", "glass"], "address": "Lyon"})
    print(tm.result(order, timeout=10))
    # {'boxes': ['box-mug', 'box-gift'], 'failed': ['pack_item'], 'to': 'Lyon'}
    print([c.name for c in tm.get_child_tasks(order)])  # ['pack_item', 'pack_item', 'pack_item']

    stuck = tm.submit("slow")
    while tm.get_task(stuck).status != "suspended":  # waiting for its child
        time.sleep(0.05)
    tm.cancel_task(stuck, reason="no longer needed")  # the task and its unfinished children
    print([t.status for t in [tm.get_task(stuck), *tm.get_child_tasks(stuck)]])
    # ['permanently_failed', 'permanently_failed']
