"""Start a real Celery worker of ``interconnect`` with the fault tests' transport options.

``python -m tests.harness.worker --visibility-timeout 12 --task-time-limit 10 -- <worker args>``

The project's settings keep Redis' ``visibility_timeout`` at 3600 s, far above any task's hard
time limit, so that a slow task is never delivered twice. A worker-main-process kill (X2) is
only recovered after that timeout, so this test entry point shortens BOTH together and keeps the
same rule: ``visibility_timeout > time_limit`` for every task (task annotations override the
per-task ``time_limit`` of the decorators). Nothing else differs from ``celery -A interconnect``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visibility-timeout", type=float, required=True)
    parser.add_argument("--task-time-limit", type=float, required=True)
    ours, worker_args = parser.parse_known_args(argv)
    if ours.visibility_timeout <= ours.task_time_limit:
        parser.error("visibility_timeout must exceed the task time limit (RELIABILITY 2.3)")
    from interconnect.celery import app

    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "visibility_timeout": ours.visibility_timeout,
        # kombu sweeps for expired unacked messages every interval x throttle seconds (100 s by
        # default); with a short visibility timeout the sweep must be as short, or a lost
        # worker's tasks wait for the sweep rather than for the timeout.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    app.conf.task_annotations = {
        "*": {
            "time_limit": ours.task_time_limit,
            "soft_time_limit": max(1.0, ours.task_time_limit - 2),
        }
    }
    args = [a for a in worker_args if a != "--"]
    app.worker_main(["worker", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
