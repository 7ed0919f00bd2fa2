"""X9: a site agent lost mid-verification (SIGKILL, or SIGSTOP then SIGCONT).

A real simulated agent process (``python -m agent --simulate honest:PORT``) serves three
centers' pools; a real Celery worker verifies them (``pool_verify``: claim, gRPC probe and
benchmark, Freivalds, verdict). The agent is killed or frozen while a benchmark streams. The
invariant: no pool becomes ``active`` without a PASSED run carrying its Freivalds evidence, and
no run is left open. After SIGCONT the retries must pass: ``recovery_s`` is SIGCONT -> first
pool active. The fault must land mid-run: the runs ``running`` (with ``started_at``) at the
instant of the signal are recorded, and after SIGKILL at least one of them must end in error.
The verifier's clock runs through a SIGSTOP (a frozen agent is indistinguishable from a slow one),
so a run in flight at the freeze may pass only on a later attempt, with a new challenge; the
pools whose runs had not started verify after SIGCONT. ``lost``: a submitted pool whose
verification never finished; ``doubled``: a pool with two passed runs; ``oversold`` is None
(``n/a``): nothing is booked.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
import time
from collections.abc import Callable

import pytest

from tests.harness.figures import Figure, rounded
from tests.harness.platform import Platform
from tests.harness.procs import PYTHON, ManagedProcess, free_port, port_open, wait_until
from tests.harness.redis import PrivateRedis

pytestmark = pytest.mark.slow

POOLS = 3
# Verification v2 at the tests' scale (tests/verification/conftest.py): 989 TFLOPS declared at
# 1e-7 is ~99 MFLOPS per emulated device; a 3 s target sizes the chain to 9 steps of 256 x 256
# (~0.34 s each), so each of the 8 devices of the sampled node streams commitments for ~3 s:
# long enough for the fault to land mid-chain, light enough for a busy 2-core machine.
TIME_SCALE = "1e-7"
VERIFY_ENV = {
    "VERIFICATION_TIME_SCALE": TIME_SCALE,
    "VERIFICATION_MATRIX_SIZE": "128",
    "VERIFICATION_TARGET_SECONDS": "3",
    "VERIFICATION_SAMPLE_NODES": "1",
    "VERIFICATION_ACCEPT_SIMULATED": "True",
    "VERIFICATION_RPC_TIMEOUT": "3",
    "VERIFICATION_MAX_RETRIES": "3",
    "VERIFICATION_TASK_TIME_LIMIT": "30",
}

REGISTER = """
from django.contrib.auth import get_user_model
from registry import services
from registry.choices import Door
from registry.models import Accelerator, Cluster
actor = get_user_model().objects.get(username="zhongwei")
ids = []
for i in range(POOLS):
    center = services.center_register(actor=actor, door=Door.CLI, data={
        "cluster": Cluster.objects.get(code="ZW"), "name": f"x9-center-{i}", "latitude": 37.5,
        "longitude": 105.2, "pue": 1.2, "green_power_share": 0.5, "agent_endpoint": ENDPOINT,
    })
    pool = services.pool_create(actor=actor, door=Door.CLI, center=center, data={
        "name": "x9-pool", "accelerator": Accelerator.objects.get(slug="nvidia-h100-sxm"),
        "accelerators_per_node": 8, "nodes": 1, "price_per_accelerator_hour": "10.00",
        "currency": "CNY", "declared_tflops_per_accelerator": 989.0,
    })
    services.pool_submit(pool=pool, actor=actor, door=Door.CLI)
    ids.append(pool.national_id)
RESULT = ids
"""


def _start_agent(platform: Platform, port: int) -> ManagedProcess:
    agent = platform.procs.start(
        "agent",
        [
            PYTHON, "-m", "agent", "--simulate", f"honest:{port}", "--time-scale", TIME_SCALE,
            "--model", "nvidia-h100-sxm", "--accelerators", "8", "--nodes", "1",
            "--declared-tflops", "989",
        ],
        env=platform.env(),
    )  # fmt: skip
    wait_until(lambda: port_open(port), timeout=30, what="simulated agent")
    return agent


def _runs(platform: Platform) -> dict[str, int]:
    return dict(
        platform.sql("SELECT state, count(*) FROM verification_verificationrun GROUP BY state")
    )


def _verified_without_check(platform: Platform) -> int:
    """Active pools with no PASSED run that holds Freivalds evidence."""
    return platform.sql(
        """
        SELECT count(*) FROM registry_pool p
        WHERE p.status = 'active' AND NOT EXISTS (
            SELECT 1 FROM verification_verificationrun r
            WHERE r.pool_id = p.id AND r.state = 'passed' AND r.finished_at IS NOT NULL
              AND jsonb_array_length(r.freivalds) > 0
        )
        """
    )[0][0]


def _running_now(platform: Platform) -> list[int]:
    """Runs claimed and started (past their quick probes), not finished: a benchmark in flight."""
    return [
        pk
        for (pk,) in platform.sql(
            "SELECT id FROM verification_verificationrun "
            "WHERE state = 'running' AND started_at IS NOT NULL AND finished_at IS NULL"
        )
    ]


def _unfinished_pools(platform: Platform, pools: list[str]) -> int:
    """Submitted pools with no finished verification run (a submission lost on the way)."""
    return platform.sql(
        "SELECT count(*) FROM registry_pool p WHERE p.national_id = ANY(%s) AND NOT EXISTS ("
        "SELECT 1 FROM verification_verificationrun r "
        "WHERE r.pool_id = p.id AND r.finished_at IS NOT NULL)",
        (pools,),
    )[0][0]


def _active(platform: Platform) -> int:
    return platform.sql("SELECT count(*) FROM registry_pool WHERE status = 'active'")[0][0]


class HeartbeatRig:
    """One listed pool, its agent beating every second to a real Telemetry server, a worker
    running ``heartbeat_sweep`` and ``beats`` Celery beat processes dispatching it every second.
    """

    def __init__(
        self,
        platform: Platform,
        *,
        beats: int,
        env: dict[str, str],
        worker_prefix: tuple[str, ...] = (),
    ) -> None:
        self.platform = platform
        self.agent_port, self.telemetry_port = free_port(), free_port()
        endpoint = repr(f"127.0.0.1:{self.agent_port}")
        self.ids = platform.django(LISTED_POOL.replace("ENDPOINT", endpoint))
        platform.procs.start(
            "telemetry",
            [PYTHON, "manage.py", "run_telemetry", "--port", str(self.telemetry_port)],
            env=platform.env(),
        )
        wait_until(lambda: port_open(self.telemetry_port), timeout=30, what="telemetry server")
        self.worker = platform.start_worker(prefix=worker_prefix, **env)
        self.beat_procs = [
            platform.procs.start(
                f"beat-{n}",
                # DEBUG: beat logs "<task> sent. id-><id>" only once the message is published
                # (its INFO line comes before, and a stop can fall between the two).
                [PYTHON, "-m", "celery", "-A", "interconnect", "beat", "-l", "debug"],
                env=platform.env(LOG_LEVEL="INFO", **env),
            )
            for n in range(1, beats + 1)
        ]

    def start_agent(self, name: str) -> ManagedProcess:
        return self.platform.procs.start(
            name,
            [
                PYTHON, "-m", "agent", "--simulate", f"honest:{self.agent_port}",
                "--time-scale", TIME_SCALE, "--model", "nvidia-h100-sxm",
                "--accelerators", "8", "--nodes", "1", "--declared-tflops", "989",
                "--platform", f"127.0.0.1:{self.telemetry_port}",
                "--token", self.platform.token(), "--heartbeat-interval", "1",
                "--center-id", self.ids["center"],
                "--pool-id", f"nvidia-h100-sxm={self.ids['pool']}",
            ],
            env=self.platform.env(),
        )  # fmt: skip

    def status(self) -> str:
        return self.platform.sql(
            "SELECT status FROM registry_pool WHERE national_id = %s", (self.ids["pool"],)
        )[0][0]

    def beats_recorded(self) -> int:
        return self.platform.sql("SELECT count(*) FROM verification_heartbeat")[0][0]

    def sweeps_run(self) -> int:
        return len(re.findall(r"heartbeat_sweep\[[^\]]+\] succeeded", self.worker.log()))

    def sweep_ids_received(self) -> set[str]:
        return set(re.findall(r"heartbeat_sweep\[([^\]]+)\] received", self.worker.log()))

    def sweeps_received(self) -> int:
        return len(self.sweep_ids_received())

    def sweep_ids_dispatched(self) -> list[set[str]]:
        """Ids of the sweeps each beat process published (read from its log file: it may be
        stopped). Beat logs the id after the publish returned, so a stop that lands between its
        "Sending due task" line and the publish does not count as a sweep sent and lost."""
        return [
            set(
                re.findall(
                    r"verification\.tasks\.heartbeat_sweep sent\. id->([0-9a-f-]+)",
                    b.log_path.read_text(errors="replace"),
                )
            )
            for b in self.beat_procs
        ]

    def sweeps_dispatched(self) -> list[int]:
        return [len(ids) for ids in self.sweep_ids_dispatched()]

    def sweeps_lost(self) -> set[str]:
        """Ids published by a beat that the worker never received."""
        return set().union(*self.sweep_ids_dispatched()) - self.sweep_ids_received()


LOG_TIME = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3})")


def clock_offset(log: str, marker: str) -> float | None:
    """Seconds between the time a process stamped on its last log line holding ``marker`` and
    this process's clock now (both local time); None when no such line.

    The line was written at most a sweep interval ago, so this is the process's clock skew, less
    at most about a second."""
    lines = [line for line in log.splitlines() if marker in line and LOG_TIME.search(line)]
    if not lines:
        return None
    found = LOG_TIME.search(lines[-1])
    assert found is not None
    stamped = dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
    stamped += dt.timedelta(milliseconds=int(found.group(2)))
    return (stamped - dt.datetime.now()).total_seconds()


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_no_pool_is_verified_without_a_completed_check_when_its_agent_is_lost(
    fault: str,
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    figure: Callable[..., Figure],
) -> None:
    redis = make_redis(appendonly=False)
    platform = make_platform(broker_url=redis.url)
    fig = figure("X9.agent_loss", fault=fault, attempted=POOLS, recovery_s=None)
    port = free_port()
    agent = _start_agent(platform, port)
    platform.start_worker(**VERIFY_ENV)
    code = REGISTER.replace("POOLS", str(POOLS)).replace("ENDPOINT", repr(f"127.0.0.1:{port}"))
    pools = platform.django(code)
    assert len(pools) == POOLS
    # The fault lands while a benchmark streams: a run is claimed and past its quick probes.
    wait_until(lambda: _runs(platform).get("running"), timeout=60, what="a running run")
    time.sleep(0.6)
    fig["passed_before_fault"] = _runs(platform).get("passed", 0)
    # Read at the last moment before the signal: these runs are mid-benchmark when it lands.
    in_flight = _running_now(platform)
    fault_at = time.monotonic()
    if fault == "sigkill":
        agent.kill()
    else:
        agent.signal(signal.SIGSTOP)
        # Longer than the RPC deadline (probes and openings time out) and more than the 20 %
        # the throughput tolerance leaves on a 3 s chain: nothing in flight can pass as it is.
        time.sleep(4.0)
        agent.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        first = wait_until(
            lambda: _active(platform) > fig["passed_before_fault"] and time.monotonic(),
            timeout=60,
            what="a pool verified after SIGCONT",
        )
        fig["recovery_s"] = rounded(first - resumed_at)
    wait_until(
        lambda: not ({"queued", "running"} & set(_runs(platform))),
        timeout=90,
        what="every run finished (passed, failed or error)",
    )
    runs = _runs(platform)
    in_flight_ended = dict(
        platform.sql(
            "SELECT state, count(*) FROM verification_verificationrun WHERE id = ANY(%s) "
            "GROUP BY state",
            (in_flight,),
        )
    )
    # A run in flight at the fault that passed did so on a later attempt (a new challenge
    # after the agent came back), never on the attempt the fault interrupted.
    passed_in_flight_attempts = [
        attempts
        for (attempts,) in platform.sql(
            "SELECT attempts FROM verification_verificationrun "
            "WHERE id = ANY(%s) AND state = 'passed'",
            (in_flight,),
        )
    ]
    fig.update(
        runs=sum(runs.values()),
        run_states=runs,
        in_flight_at_fault=len(in_flight),
        in_flight_ended=in_flight_ended,
        in_flight_passed_attempts=passed_in_flight_attempts,
        acked=_active(platform),
        verified_without_check=_verified_without_check(platform),
        stuck_runs=runs.get("queued", 0) + runs.get("running", 0),
        fault_to_settled_s=rounded(time.monotonic() - fault_at),
        lost=_unfinished_pools(platform, pools),
        doubled=platform.sql(
            "SELECT count(*) FROM (SELECT pool_id FROM verification_verificationrun "
            "WHERE state = 'passed' GROUP BY pool_id HAVING count(*) > 1) d"
        )[0][0],
        oversold=None,  # nothing is booked
    )
    assert fig["in_flight_at_fault"] >= 1, "no benchmark was in flight: the fault proved nothing"
    assert fig["lost"] == 0
    assert fig["verified_without_check"] == 0
    assert fig["stuck_runs"] == 0
    assert fig["doubled"] == 0
    if fault == "sigkill":
        # Nothing can pass without the agent. A run whose challenge was sent when the agent died
        # fails (nothing is retried once RunBenchmark is sent: a retry would redraw the sample);
        # one that had not sent it yet runs out of retries and ends in error.
        assert runs.get("error", 0) + runs.get("failed", 0) + runs.get("passed", 0) == POOLS
        assert fig["acked"] == runs.get("passed", 0)
        # The kill landed on a benchmark: a run in flight at the kill could not pass.
        assert in_flight_ended.get("failed", 0) + in_flight_ended.get("error", 0) >= 1, (
            in_flight_ended
        )
        assert not in_flight_ended.get("passed"), in_flight_ended
    else:
        assert all(attempts >= 2 for attempts in passed_in_flight_attempts), in_flight_ended
        # Every pool not caught mid-chain verifies after SIGCONT.
        assert fig["acked"] >= POOLS - len(in_flight), runs
        assert fig["recovery_s"] is not None


def test_the_retry_schedule_outlasts_an_agent_start_up() -> None:
    """The countdowns ``pool_verify`` retries an unreachable agent with, as Celery computes them
    (``autoretry``): fixed (no full jitter, which may draw 0 s each time) and a minute in all
    with the default 5 retries."""
    from celery.utils.time import get_exponential_backoff_interval

    from verification.tasks import pool_verify

    assert pool_verify.retry_jitter is False
    countdowns = [
        get_exponential_backoff_interval(
            factor=int(max(1.0, pool_verify.retry_backoff)),
            retries=retries,
            maximum=pool_verify.retry_backoff_max,
            full_jitter=pool_verify.retry_jitter,
        )
        for retries in range(5)  # VERIFICATION_MAX_RETRIES' default
    ]
    assert countdowns[0] >= 2, countdowns
    assert sum(countdowns) >= 60, countdowns


def test_a_worker_started_before_its_agent_waits_for_it(
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    figure: Callable[..., Figure],
) -> None:
    """X9 (start-up order, as in ``make run``): the worker is up and the pool submitted before
    the agent listens. ``pool_verify``'s retries (2, 4, 8, 16, 32 s without jitter, the default
    5 of them) must outlast the agent's start-up, so the run passes on a retry instead of ending
    in error; with full jitter the same 5 retries could all be drawn near 0 s."""
    redis = make_redis(appendonly=False)
    platform = make_platform(broker_url=redis.url)
    fig = figure("X9.late_agent", attempted=1, recovery_s=None)
    env = {k: v for k, v in VERIFY_ENV.items() if k != "VERIFICATION_MAX_RETRIES"}
    platform.start_worker(**env)  # the default VERIFICATION_MAX_RETRIES (5)
    port = free_port()
    code = REGISTER.replace("POOLS", "1").replace("ENDPOINT", repr(f"127.0.0.1:{port}"))
    (pool,) = platform.django(code)

    def attempts() -> int:
        return platform.sql("SELECT coalesce(max(attempts), 0) FROM verification_verificationrun")[
            0
        ][0]

    # The agent starts only once the worker has been refused twice (the first delivery and the
    # first retry): the fault landed.
    wait_until(lambda: attempts() >= 2, timeout=60, what="two refused deliveries")
    refused_at = time.monotonic()
    assert _runs(platform).keys() <= {"queued", "running"}, _runs(platform)
    fig["refused_before_agent"] = attempts()
    _start_agent(platform, port)
    agent_up_at = time.monotonic()
    wait_until(
        lambda: not ({"queued", "running"} & set(_runs(platform))),
        timeout=90,
        what="the run finished",
    )
    state, tries, reason = platform.sql(
        "SELECT state, attempts, verdict_reason FROM verification_verificationrun"
    )[0]
    fig.update(
        run_state=state,
        deliveries=tries,
        acked=_active(platform),
        lost=int(state != "passed"),
        doubled=0 if _active(platform) <= 1 else _active(platform) - 1,
        oversold=None,  # nothing is booked
        recovery_s=rounded(time.monotonic() - agent_up_at),  # agent listening -> run finished
    )
    assert (state, _active(platform)) == ("passed", 1), reason
    assert tries >= 3, tries  # passed on a retry, after the agent came up
    assert _verified_without_check(platform) == 0
    assert time.monotonic() - refused_at < 60


HEARTBEAT_ENV = {"HEARTBEAT_DEGRADED_AFTER": "2", "HEARTBEAT_OFFLINE_AFTER": "4"}

LISTED_POOL = """
import datetime as dt
from django.contrib.auth import get_user_model
from django.utils import timezone
from registry import services
from registry.choices import Door
from registry.models import Accelerator, Center, Cluster, Pool
actor = get_user_model().objects.get(username="zhongwei")
center = services.center_register(actor=actor, door=Door.CLI, data={
    "cluster": Cluster.objects.get(code="ZW"), "name": "x9 heartbeat center", "latitude": 37.5,
    "longitude": 105.2, "pue": 1.2, "green_power_share": 0.5, "agent_endpoint": ENDPOINT,
})
pool = services.pool_create(actor=actor, door=Door.CLI, center=center, data={
    "name": "x9-hb-pool", "accelerator": Accelerator.objects.get(slug="nvidia-h100-sxm"),
    "accelerators_per_node": 8, "nodes": 1, "price_per_accelerator_hour": "10.00",
    "currency": "CNY", "declared_tflops_per_accelerator": 989.0,
})
# Test set-up only: a pool verified a moment ago (verification is the other test's subject).
Center.objects.filter(pk=center.pk).update(status="active")
Pool.objects.filter(pk=pool.pk).update(status="active", verified_at=timezone.now())
from django.core.management import call_command
call_command("setup_schedules")
# The sweeps run every second here (10 s in production) so that detection is measured in
# seconds of the thresholds above, not of the schedule.
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.filter(task="verification.tasks.heartbeat_sweep").update(interval=every)
PeriodicTasks.update_changed()
RESULT = {"center": center.national_id, "pool": pool.national_id}
"""


def test_a_silent_agent_takes_its_pool_offline_and_back(
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    figure: Callable[..., Figure],
) -> None:
    """X9 (heartbeats) and X13 (two beats): SIGKILL an agent that beats every second.

    Real Telemetry server, Celery worker running ``heartbeat_sweep``, and TWO Celery beat
    processes on the django-celery-beat schedule of ``setup_schedules`` (a deployment mistake
    RELIABILITY 2.4 warns about: every sweep is dispatched twice). The pool must go degraded,
    then offline (unlisted), and back to active once a new agent process beats again, with
    exactly one lifecycle transition per move despite the doubled sweeps.
    """
    redis = make_redis(appendonly=False)
    platform = make_platform(broker_url=redis.url)
    fig = figure(
        "X9.heartbeat_loss",
        heartbeat_interval_s=1,
        degraded_after_s=int(HEARTBEAT_ENV["HEARTBEAT_DEGRADED_AFTER"]),
        offline_after_s=int(HEARTBEAT_ENV["HEARTBEAT_OFFLINE_AFTER"]),
        recovery_s=None,
    )
    rig = HeartbeatRig(platform, beats=2, env=HEARTBEAT_ENV)
    start_beating_agent, status, beats = rig.start_agent, rig.status, rig.beats_recorded
    beat_procs, ids = rig.beat_procs, rig.ids
    agent = start_beating_agent("agent")
    started_at = time.monotonic()
    wait_until(lambda: beats() >= 3, timeout=60, what="heartbeats recorded")
    # Beats keep the pool active across several sweeps before the fault.
    time.sleep(3.0)
    assert status() == "active"
    agent.kill()
    killed_at = time.monotonic()
    wait_until(lambda: status() == "degraded", timeout=60, what="degraded")
    fig["degraded_detected_s"] = rounded(time.monotonic() - killed_at)
    wait_until(lambda: status() == "offline", timeout=60, what="offline")
    fig["offline_detected_s"] = rounded(time.monotonic() - killed_at)
    restarted_at = time.monotonic()
    start_beating_agent("agent-restarted")
    wait_until(lambda: status() == "active", timeout=60, what="active again")
    fig["recovery_s"] = rounded(time.monotonic() - restarted_at)
    transitions = [
        t
        for (t,) in platform.sql(
            "SELECT to_status FROM registry_lifecycletransition WHERE object_key = %s ORDER BY id",
            (ids["pool"],),
        )
    ]
    # Stop both beats, then let the worker take what they sent: every sweep dispatched must
    # have reached the worker (X13 "lost"), and none may have moved the pool twice.
    for b in beat_procs:
        b.stop()
    wait_until(
        lambda: not rig.sweeps_lost(),
        timeout=30,
        what="the worker to receive every dispatched sweep",
    )
    expected = ["degraded", "offline", "active"]
    missing = sum(1 for t in expected if t not in transitions)
    fig.update(
        transitions=transitions,
        attempted=len(expected),  # the moves the fault and the restart call for
        acked=len(expected) - missing,
        lost=missing,
        doubled=len(transitions) - (len(expected) - missing),  # moves beyond one per expected
        oversold=None,  # nothing is booked
    )
    per_beat = rig.sweeps_dispatched()
    received = rig.sweeps_received()
    figure(
        "X13.double_beat",
        beats=len(beat_procs),
        dispatched_per_beat=per_beat,
        attempted=sum(per_beat),
        acked=rig.sweeps_run(),
        lost=len(rig.sweeps_lost()),
        doubled=fig["doubled"],
        oversold=None,  # nothing is booked
        seconds=rounded(time.monotonic() - started_at),
        transitions=len(transitions),
        recovery_s=None,
    )
    # Nothing moved the pool before the fault (set up active), so these are all its moves.
    assert transitions == expected
    # The fault landed: both beat processes dispatched sweeps, and the worker got them all.
    assert all(n >= 2 for n in per_beat), per_beat
    assert not rig.sweeps_lost()
    assert received >= sum(per_beat)


def test_a_worker_with_a_skewed_clock_does_not_take_a_beating_pool_offline(
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    figure: Callable[..., Figure],
) -> None:
    """X12 (clock skew): the worker running ``heartbeat_sweep`` lives 5 minutes ahead
    (``faketime -f +5m``), everything else on the right time; the agent beats every second.

    Silence must be judged on one clock: heartbeats are stamped with the Telemetry server's
    clock, so a sweeper comparing them with its own skewed clock sees 5 minutes of silence
    (default thresholds: degraded after 30 s, offline after 120 s) and unlists a healthy pool.
    """
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (Debian package faketime)")
    redis = make_redis(appendonly=False)
    platform = make_platform(broker_url=redis.url)
    fig = figure("X12.clock_skew", skew="+5m", process="worker", sweeps=0, recovery_s=None)
    rig = HeartbeatRig(platform, beats=1, env={}, worker_prefix=("faketime", "-f", "+5m"))
    rig.start_agent("agent")
    wait_until(lambda: rig.beats_recorded() >= 3, timeout=60, what="heartbeats recorded")
    # Sweeps every second for a while, the agent beating all along.
    wait_until(lambda: rig.sweeps_run() >= 5, timeout=60, what="sweeps")
    # The fault landed: the worker's clock (stamped on its log lines) is 5 minutes ahead, the
    # unskewed beat's is not.
    worker_offset = clock_offset(rig.worker.log(), "heartbeat_sweep")
    beat_offset = clock_offset(
        rig.beat_procs[0].log(), "Sending due task"
    )  # written by the same sweep cadence
    fig.update(
        worker_clock_offset_s=rounded(worker_offset),
        beat_clock_offset_s=rounded(beat_offset),
        sweeps=rig.sweeps_run(),
        final_status=rig.status(),
        false_moves=len(
            platform.sql(
                "SELECT 1 FROM registry_lifecycletransition WHERE object_key = %s",
                (rig.ids["pool"],),
            )
        ),
    )
    fig.update(
        attempted=fig["sweeps"],  # sweeps run by the skewed worker
        acked=None,  # a sweep answers nothing
        lost=fig["false_moves"],  # moves that took the beating pool out of the listing
        doubled=None,  # nothing is done twice here
        oversold=None,  # nothing is booked
    )
    assert worker_offset is not None and 290 <= worker_offset <= 310, worker_offset
    assert beat_offset is not None and abs(beat_offset) <= 10, beat_offset
    assert (fig["final_status"], fig["false_moves"]) == ("active", 0)
