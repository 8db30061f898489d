"""Testing handlers: a unit test without a database, and one through a real worker.

Run with ``pytest examples/test_handlers.py`` (tideflow's pytest plugin gives the
``tideflow_manager`` fixture, a TaskManager on sqlite::memory:).
"""

from tideflow.testing import make_task, recorded, run_until_idle


def ship_order(task):
    if task.stage == 0:
        task.progress("splitting", progress_percent=10)
        return task.next([{"name": "pack", "payload": item} for item in task.payload])
    return [child["result"] for child in task.result]


def test_the_first_stage_fans_out():
    task = make_task(["mug", "poster"])
    spawn = ship_order(task)
    assert [child["payload"] for child in spawn.children] == ["mug", "poster"]
    assert [event.event_type for event in recorded(task)] == ["task_progress"]


def test_the_whole_workflow(tideflow_manager):
    tideflow_manager.use("ship_order", ship_order)
    tideflow_manager.use("pack", lambda task: f"box-{task.payload}")
    order = tideflow_manager.submit("ship_order", ["mug", "poster"])
    assert run_until_idle(tideflow_manager)["completed"] == 3
    assert tideflow_manager.get_task(order).result == ["box-mug", "box-poster"]
