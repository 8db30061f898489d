"""Capabilities and routing: a task runs only on a worker that has what it requires."""

from tideflow import TaskManager

DB = "sqlite:tasks.db"  # one database shared by a client and two workers


def render(task):
    return f"{task.payload} rendered on {task.worker_id.split('-')[0]}"


cpu = TaskManager(DB, worker_id="cpu-worker")
gpu = TaskManager(DB, worker_id="gpu-worker", capabilities=["gpu", "high-memory"])
for worker in (cpu, gpu):
    worker.use("render", render)
    worker.start()

client = TaskManager(DB, allow_unregistered=True)  # enqueues only, runs nothing
plain = client.submit("render", "thumbnail")
heavy = client.submit("render", "4k video", requires=["gpu"])

print(client.result(heavy, timeout=10))  # 4k video rendered on gpu
print(client.wait(plain, timeout=10).status)  # completed (on either worker)

gpu.stop()  # now nobody can run a task that requires a gpu: it waits, visibly
waiting = client.submit("render", "8k video", requires=["gpu"])
print(client.get_unserved_tasks())  # [{'name': 'render', 'requires': ['gpu'], ...}]
for manager in (cpu, gpu, client):
    manager.close()
