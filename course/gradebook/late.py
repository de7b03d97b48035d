"""Late work: how many days after the deadline a submission came, and what the course's policy takes for it.

course.yml gives each assignment a `deadline` (with its time zone) and the course (or the assignment) a `late`
policy (course/config.py, `LatePolicy`):

    late:
      policy: penalty        # none | penalty | zero
      grace_minutes: 15      # up to 15 minutes after the deadline is on time
      penalty_per_day: 10    # percent of the assignment's points, per day or part of a day late
      max_penalty: 50        # at most 50 percent

Days late count from the deadline (plus the student's extension, if the source has one), each started day
counting as one: 1 hour late is 1 day, 25 hours are 2. A submission within the grace period is on time (0 days).
`penalty` takes `penalty_per_day` percent of the assignment's points per day, at most `max_penalty` percent (100
if not set); `zero` takes every point; `none` takes nothing, but the days are still shown. A submission whose
time is unknown (no timestamp.txt, no readable repository) is not penalised, and says so.
"""

from __future__ import annotations

import datetime as dt
import math

from course.config import LatePolicy
from course.gradebook.records import Late
from course.gradebook.times import SubmissionTime

DAY = dt.timedelta(days=1)


def rule(policy: LatePolicy) -> str:
    """The policy in words, for the feedback."""
    grace = f", after a grace period of {policy.grace_minutes:g} minutes" if policy.grace_minutes else ""
    if policy.policy == "none":
        return "no penalty for late work"
    if policy.policy == "zero":
        return f"late work scores 0{grace}"
    cap = f", at most {policy.max_penalty:g}%" if policy.max_penalty is not None else ""
    return f"{policy.penalty_per_day:g}% of the points per day late{cap}{grace}"


def assess(policy: LatePolicy, deadline: dt.datetime | None, time: SubmissionTime,
           extension: dt.timedelta = dt.timedelta(0)) -> Late:
    """What `policy` says about a submission made at `time`, due at `deadline` (+ `extension`)."""
    if deadline is None:
        return Late(None, None, 0.0, "no deadline")
    due = deadline + extension
    words = rule(policy)
    if time.when is None:
        return Late(due, None, 0.0, words, "no submission time known: not penalised")
    after = time.when - due
    if after <= dt.timedelta(0):
        return Late(due, 0, 0.0, words)
    if after <= dt.timedelta(minutes=policy.grace_minutes):
        return Late(due, 0, 0.0, words, "submitted within the grace period: on time")
    days = math.ceil(after / DAY)
    if policy.policy == "none":
        percent = 0.0
    elif policy.policy == "zero":
        percent = 100.0
    else:
        cap = policy.max_penalty if policy.max_penalty is not None else 100.0
        percent = min(policy.penalty_per_day * days, cap, 100.0)
    return Late(due, days, percent, words)
