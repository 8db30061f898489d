"""Cron: a schedule read in a time zone; each run is a round of the same task."""

import time
from zoneinfo import ZoneInfo

from tideflow import TaskManager

tm = TaskManager("sqlite:tasks.db")
runs = []


@tm.task("backup")
def backup(task):
    runs.append(task.id)
    return {"runs": len(runs)}


# 6 fields, seconds first: 03:00:00 every day, wall-clock time in Paris (DST handled)
nightly = tm.cron("backup", "0 0 3 * * *", {"target": "s3://backups"}, tz="Europe/Paris")
info = tm.get_task(nightly)
print(info.type, info.cron_expr, info.tz)  # cron 0 0 3 * * * Europe/Paris
print(info.next_run_time.astimezone(ZoneInfo("Europe/Paris")).time())  # 03:00:00

# a schedule every second, to watch one run: after each run it is pending again
every_second = tm.cron("backup", "* * * * * *", tz="UTC")
tm.start()
while len(runs) < 2:
    time.sleep(0.05)
tm.pause_task(every_second)  # a schedule stops until resume_task
print(tm.get_task(every_second).status)  # paused
tm.stop()
tm.close()
