"""Cron expressions as the scheduler reads them.

Its own module so that validating a config with a cron schedule loads APScheduler's cron trigger only, not
the daemon with its state store, engine and metrics (start-up time of `mailmirror config validate`).
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def cron_trigger(expression: str, timezone: str | None) -> BaseTrigger:
    """A 5-field crontab as APScheduler wants it (its day_of_week counts from Monday = 0; cron's from
    Sunday = 0 or 7): numeric days are turned into names. When both day fields are restricted, cron
    runs on days matching EITHER (`0 0 1 * 1`: the 1st and every Monday) while APScheduler would want
    both: that case becomes two triggers, whichever fires first."""
    minute, hour, day, month, day_of_week = expression.split()
    day_of_week = re.sub(r"(?<![/\d])\d(?!\d)", lambda m: DAYS[int(m.group())], day_of_week)
    zone = ZoneInfo(timezone) if timezone else None

    def trigger(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=zone)

    if day.startswith("*") or day_of_week.startswith("*"):
        return trigger(day, day_of_week)
    return OrTrigger([trigger(day, "*"), trigger("*", day_of_week)])
