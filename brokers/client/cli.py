"""The ``interconnect`` command line for AI firms: capacity, place, book, confirm, bookings,
cancel and watch, talking to the gRPC broker.

    interconnect --broker 127.0.0.1:50051 --token $TOKEN capacity --model nvidia-a100-80g
    interconnect place --model nvidia-a100-80g --count 16 --duration 4h --data-hub BTH --data-gb 500
    interconnect book --model nvidia-a100-80g --count 16 --duration 4h --key my-run-1 --watch
    interconnect watch BK-20261123-1A2B3C4D

Errors print once on stderr (the status, then each field with its flag, or the reason code) and
exit with the status the error catalog (``protos.errors``) declares: 1 the broker refused the
request as it stands (or failed), 3 not authenticated or not allowed, 4 not found, 5 capacity or
quota exhausted, 6 a stale version, 75 a conflict or outage after which the same command is safe
to run again. Arguments the command line refuses itself exit 2, with the broker's own message.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
import zoneinfo
from collections.abc import Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from brokers import limits
from brokers.client.client import BrokerClient, timestamp, workload_spec
from protos import broker_pb2 as pb
from protos.errors import EXIT_USAGE, exit_status

DURATION = re.compile(r"^(?P<sign>[-+]?)(?P<body>(?:\d+(?:\.\d+)?[smhd])+|\d+(?:\.\d+)?)$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
RELATIVE = re.compile(r"^\+\s*(?P<body>(?:\d+(?:\.\d+)?[smhd])+)$")
DAY_TIME = re.compile(r"^(?P<day>today|tomorrow)(?:\s+(?P<h>\d{1,2}):(?P<m>\d{2}))?$")
START_FORMATS = "2026-12-01 09:00, 2026-12-01T09:00+08:00, +2h, now, today 14:00, tomorrow 09:00"


class Refused(Exception):
    """An argument the command line refuses before calling the broker: the request field, its
    flag and the broker's own message for it (``brokers.limits``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def duration_seconds(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``4h``, ``1h30m``, ``2d`` as seconds (a sign is kept, so that
    ``-2h`` gets the range message, not a format one)."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 4h, 1h30m, 2d)")
    seconds = sum(float(n) * UNITS[unit] for n, unit in DURATION_PART.findall(match["body"]))
    return -seconds if match["sign"] == "-" else seconds


def _zone(name: str) -> dt.tzinfo:
    if name.upper() in ("UTC", "Z"):
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown time zone {name!r} (e.g. UTC, Asia/Shanghai)"
        ) from None


def moment(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A time as people type it: ISO 8601 (``2026-12-01T09:00Z``, ``2026-12-01 09:00``,
    ``2026-12-01 09:00+08:00``), ``now``, ``+2h`` / ``+1h30m`` from now, ``today 14:00``,
    ``tomorrow 09:00``; a trailing zone name (``2026-12-01 09:00 Asia/Shanghai``) is allowed.
    Without a zone it is UTC."""
    raw = " ".join(text.split())
    zone: dt.tzinfo = dt.UTC
    head, _, last = raw.rpartition(" ")
    if head and ("/" in last or last.upper() in ("UTC", "Z")):
        raw, zone = head, _zone(last)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
    lowered = raw.lower()
    if lowered == "now":
        return now
    if rel := RELATIVE.match(lowered):
        return now + dt.timedelta(seconds=duration_seconds(rel["body"]))
    if day := DAY_TIME.match(lowered):
        date = now.date() + dt.timedelta(days=1 if day["day"] == "tomorrow" else 0)
        try:
            clock = dt.time(int(day["h"] or 0), int(day["m"] or 0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a time of day: {text!r}") from None
        return dt.datetime.combine(date, clock, tzinfo=zone)
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (e.g. {START_FORMATS})") from None
    return value if value.tzinfo else value.replace(tzinfo=zone)


def said_back(moment_: dt.datetime) -> str:
    """A time as the command understood it, with its zone and, when not UTC, in UTC too."""
    text = f"{moment_:%Y-%m-%d %H:%M:%S} {moment_.tzname() or 'UTC'}"
    if moment_.utcoffset() != dt.timedelta(0):
        text += f" ({moment_.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC)"
    return text


def option_part(text: str) -> tuple[str, int]:
    pool, _, n = text.partition("=")
    if not pool or not n.isdigit():
        raise argparse.ArgumentTypeError(f"expected POOL=N, got {text!r}")
    return pool, int(n)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_name(value: int) -> str:
    return pb.BookingStatus.Name(value).removeprefix("BOOKING_STATUS_").lower()


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload")
    g.add_argument(
        "--model", default="", help="accelerator model, a catalog slug (e.g. nvidia-a100-80g)"
    )
    g.add_argument("--count", type=int, default=0, help="accelerators of --model (1 to 100000)")
    g.add_argument(
        "--a100-equivalents",
        type=float,
        default=0.0,
        help="instead of --model and --count: any models worth N A100s",
    )
    g.add_argument(
        "--gang-size",
        type=int,
        default=1,
        help="accelerators that must start together on one pool (default 1)",
    )
    g.add_argument("--min-per-node", type=int, default=0, help="minimum accelerators per node")
    g.add_argument("--interconnect", default="", help="required fabric, e.g. nvlink, infiniband")
    g.add_argument(
        "--trait", action="append", default=[], help="required pool trait, e.g. rdma (repeatable)"
    )
    g.add_argument("--memory-gb", type=float, default=0.0, help="memory per accelerator, GB")
    g.add_argument(
        "--start",
        type=moment,
        default=None,
        help=f"earliest start (default now), e.g. {START_FORMATS}; without a zone: UTC",
    )
    g.add_argument(
        "--latest-end", type=moment, default=None, help="latest end (same formats as --start)"
    )
    g.add_argument(
        "--duration",
        type=duration_seconds,
        default=limits.DEFAULT_DURATION_SECONDS,
        help="e.g. 90s, 30m, 4h, 1h30m, 2d (default 1h; from 1 minute to 366 days)",
    )
    g.add_argument(
        "--hub",
        action="append",
        default=[],
        help="allowed hub code, e.g. NX (repeatable; default: any hub)",
    )
    g.add_argument(
        "--exclude-hub", action="append", default=[], help="excluded hub code (repeatable)"
    )
    g.add_argument("--data-hub", default="", help="hub code where the data lives, e.g. BTH")
    g.add_argument("--data-gb", type=float, default=0.0, help="data to move, GB")
    g.add_argument(
        "--latency-class",
        choices=["interactive", "training", "batch"],
        default="training",
        help="interactive stays within 15 ms of --data-hub (default training)",
    )
    g.add_argument("--price-cap", default="", help="max price per accelerator-hour, e.g. 12.50")
    g.add_argument("--split", action="store_true", help="may be split across centers")
    g.add_argument(
        "--max-centers", type=int, default=1, help="with --split: at most N centers (default 1)"
    )
    g.add_argument("--image", default="", help="container image to run")
    g.add_argument("--command", default="", help="command to run in the image")
    g.add_argument(
        "--class",
        dest="booking_class",
        choices=["reserved", "spot", "priority"],
        default="reserved",
        help="booking class (default reserved: never preempted)",
    )
    g.add_argument(
        "--spot",
        action="store_true",
        help="book spot capacity: cheaper, may be preempted (same as --class spot)",
    )
    g.add_argument(
        "--replace-on-preemption",
        action="store_true",
        help="spot: book it again elsewhere if it is preempted",
    )


# Request fields and the flags that set them: every message names the flag.
FLAGS = {
    "accelerator_model": "--model",
    "count": "--count",
    "a100_equivalents": "--a100-equivalents",
    "gang_size": "--gang-size",
    "min_accelerators_per_node": "--min-per-node",
    "interconnect": "--interconnect",
    "traits": "--trait",
    "memory_gb_per_accelerator": "--memory-gb",
    "earliest_start": "--start",
    "latest_end": "--latest-end",
    "duration": "--duration",
    "duration_seconds": "--duration",
    "hubs_allowed": "--hub",
    "hubs_excluded": "--exclude-hub",
    "data_hub": "--data-hub",
    "data_gb": "--data-gb",
    "price_cap": "--price-cap",
    "max_centers": "--max-centers",
    "idempotency_key": "--key",
    "option": "--option",
    "hub": "--hub",
    "cluster": "--cluster",
    "max_price": "--max-price",
    "start": "--start",
    "end": "--end",
    "page_size": "--page-size",
    "booking_class": "--class",
    "replace_on_preemption": "--replace-on-preemption",
    "price": "--price",
}


def field_line(field: str, message: str) -> str:
    flag = FLAGS.get(field)
    return f"  {field}: {message} [{flag}]" if flag else f"  {field}: {message}"


def check_args(args: argparse.Namespace) -> None:
    """What the request message cannot carry or would carry as something else (a negative
    count, a duration of 0 that proto3 reads as "not set", so one hour), refused here with the
    broker's own message (``brokers.limits``)."""
    if args.model and (error := limits.count_error(args.count)):
        raise Refused("count", error)
    if args.a100_equivalents and (error := limits.a100_equivalents_error(args.a100_equivalents)):
        raise Refused("a100_equivalents", error)
    if error := limits.duration_error(args.duration):
        raise Refused("duration", error)
    for name, field in (("gang_size", "gang_size"), ("max_centers", "max_centers")):
        if getattr(args, name) < 1:
            raise Refused(field, limits.AT_LEAST_ONE_MESSAGE)
    for name, field in (
        ("min_per_node", "min_accelerators_per_node"),
        ("memory_gb", "memory_gb_per_accelerator"),
        ("data_gb", "data_gb"),
    ):
        if getattr(args, name) < 0:
            raise Refused(field, limits.NEGATIVE_MESSAGE)


def spec_from_args(args: argparse.Namespace) -> pb.WorkloadSpec:
    check_args(args)
    if args.start is not None:
        print(f"earliest start: {said_back(args.start)}")
    spec = workload_spec(
        accelerator_model=args.model,
        count=args.count,
        a100_equivalents=args.a100_equivalents,
        duration_seconds=args.duration,
        earliest_start=args.start,
        latency_class=args.latency_class,
        price_cap=args.price_cap,
        gang_size=args.gang_size,
        min_accelerators_per_node=args.min_per_node,
        interconnect=args.interconnect,
        traits=args.trait,
        memory_gb_per_accelerator=args.memory_gb,
        hubs_allowed=args.hub,
        hubs_excluded=args.exclude_hub,
        data_hub=args.data_hub,
        data_gb=args.data_gb,
        allow_split=args.split,
        max_centers=args.max_centers,
        image=args.image,
        command=args.command,
        booking_class="spot" if args.spot else args.booking_class,
        replace_on_preemption=args.replace_on_preemption,
    )
    if args.latest_end is not None:
        spec.latest_end.CopyFrom(timestamp(args.latest_end))
    return spec


def print_booking(booking: pb.Booking) -> None:
    print(
        f"booking {booking.booking_id}: {status_name(booking.status)}, "
        f"{booking.accelerators} accelerators, "
        f"{booking.window_start.ToDatetime():%Y-%m-%d %H:%M}-"
        f"{booking.window_end.ToDatetime():%H:%M} UTC, est. {booking.estimated_cost} "
        f"{booking.currency}"
    )
    if booking.booking_class and booking.booking_class != "reserved":
        print(f"  class: {booking.booking_class}")
    if booking.replaced_by:
        print(f"  replaced by {booking.replaced_by}")
    if booking.flagged_reason:
        print(f"  flagged: {booking.flagged_reason}")
    if booking.status == pb.BOOKING_STATUS_HELD and booking.HasField("hold_expires_at"):
        print(f"  held until {booking.hold_expires_at.ToDatetime():%H:%M:%S} UTC: confirm it")
    print(
        table(
            ["pool", "center", "accelerators", "workload"],
            [
                [a.pool, a.center, a.accelerators, a.workload_state or "-"]
                for a in booking.allocations
            ],
        )
    )


def cmd_capacity(client: BrokerClient, args: argparse.Namespace) -> None:
    filters: dict[str, object] = {
        "accelerator_model": args.model,
        "hub": args.hub,
        "cluster": args.cluster,
        "interconnect": args.interconnect,
        "max_price": args.max_price,
        "page_size": args.page_size,
    }
    if args.start:
        print(f"from: {said_back(args.start)}")
        filters["start"] = timestamp(args.start)
    if args.end:
        print(f"to: {said_back(args.end)}")
        filters["end"] = timestamp(args.end)
    entries = list(client.capacity_all(**filters))
    print(
        table(
            ["pool", "hub", "model", "free", "of", "price/h", "spot/h", "green", "A100-eq"],
            [
                [
                    e.pool,
                    e.hub,
                    e.accelerator_model,
                    e.free,
                    e.accelerators,
                    f"{e.price_per_accelerator_hour} {e.currency}".strip(),
                    f"{e.spot_price_per_accelerator_hour} {e.currency}".strip()
                    if e.spot_price_per_accelerator_hour
                    else "-",
                    f"{e.green_power_share:.0%}",
                    f"{e.a100_equivalent_per_accelerator:.2f}",
                ]
                for e in entries
            ],
        )
    )
    free = sum(e.free for e in entries)
    print(f"{plural(len(entries), 'pool')}, {plural(free, 'accelerator')} free")
    offers = client.capacity(**{**filters, "page_size": 1}).offers
    if offers:
        print("\nresale offers (buy with `interconnect buy OFFER`):")
        print_offers(offers)


def print_offers(offers: Sequence[pb.Offer]) -> None:
    print(
        table(
            ["offer", "status", "accelerators", "pools", "start (UTC)", "end", "price"],
            [
                [
                    o.offer_id,
                    o.status,
                    o.accelerators,
                    ", ".join(f"{p.pool} x{p.accelerators}" for p in o.parts),
                    f"{o.start.ToDatetime():%Y-%m-%d %H:%M}",
                    f"{o.end.ToDatetime():%H:%M}",
                    f"{o.price} {o.currency}",
                ]
                for o in offers
            ],
        )
    )


def cmd_offer(client: BrokerClient, args: argparse.Namespace) -> None:
    """Offer a booking (or its part from --from) for resale."""
    offer = client.offer(args.booking_id, price=args.price, start=args.start)
    print(
        f"offer {offer.offer_id}: {offer.status}, {offer.price} {offer.currency}, expires "
        f"{offer.expires_at.ToDatetime():%Y-%m-%d %H:%M} UTC"
    )
    print_offers([offer])


def cmd_offers(client: BrokerClient, args: argparse.Namespace) -> None:
    print_offers(client.offers(page_size=args.page_size).offers)


def cmd_buy(client: BrokerClient, args: argparse.Namespace) -> None:
    print_booking(client.buy(args.offer_id, image=args.image, command=args.command))


def cmd_withdraw(client: BrokerClient, args: argparse.Namespace) -> None:
    print_offers([client.withdraw(args.offer_id)])


def cmd_place(client: BrokerClient, args: argparse.Namespace) -> None:
    result = client.place(spec_from_args(args), max_options=args.options)
    rows = []
    for rank, o in enumerate(result.options, 1):
        parts = " + ".join(f"{p.pool} x{p.accelerators}" for p in o.parts)
        if o.offer:
            parts = f"offer {o.offer}: {parts}"
        elif o.preemptions:
            parts += (
                " (preempts "
                + ", ".join(f"{x.bookings} spot on {x.pool}" for x in o.preemptions)
                + ")"
            )
        rows.append(
            [
                rank,
                parts,
                f"{o.cost} {o.currency}",
                f"{o.transfer_seconds:.0f}s",
                f"{o.green_power_share:.0%}",
                f"{o.score:.3f}",
            ]
        )
    print(table(["#", "pools", "cost", "transfer", "green", "score"], rows))
    if result.options:
        print("\nwhy:\n  " + "\n  ".join(result.options[0].explanation))
    if result.rejections:
        print("\nrejected:")
        for r in result.rejections:
            print(f"  {r.pool}: {r.reason_code} ({r.detail})")
    if result.prefiltered:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.prefiltered.items()))
        print(f"\nleft out by the prefilter: {counts}")


def cmd_book(client: BrokerClient, args: argparse.Namespace) -> None:
    key = args.key or f"cli-{os.getpid()}-{int(time.time())}"
    booking = client.book(
        spec_from_args(args), idempotency_key=key, option=args.option, hold=args.hold
    )
    print(f"idempotency key: {key}")
    print_booking(booking)
    if args.watch:
        cmd_watch(client, argparse.Namespace(booking_id=booking.booking_id))


def cmd_confirm(client: BrokerClient, args: argparse.Namespace) -> None:
    print_booking(client.confirm(args.booking_id))


def cmd_bookings(client: BrokerClient, args: argparse.Namespace) -> None:
    page = client.bookings(page_size=args.page_size)
    print(
        table(
            ["booking", "status", "accelerators", "start (UTC)", "pools"],
            [
                [
                    b.booking_id,
                    status_name(b.status),
                    b.accelerators,
                    f"{b.window_start.ToDatetime():%Y-%m-%d %H:%M}",
                    ", ".join(a.pool for a in b.allocations),
                ]
                for b in page.bookings
            ],
        )
    )


def cmd_cancel(client: BrokerClient, args: argparse.Namespace) -> None:
    print_booking(client.cancel(args.booking_id, reason=args.reason))


def cmd_watch(client: BrokerClient, args: argparse.Namespace) -> None:
    """Live progress: the booking's events, past ones first, each at the time it happened
    (UTC, the broker's clock), until the booking ends."""
    last = None
    for event in client.watch(args.booking_id):
        when = (
            f"{event.time.ToDatetime(tzinfo=dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
            if event.HasField("time")
            else "-"
        )
        print(
            f"{when}  {event.booking_id} {status_name(event.status):<11} "
            f"{event.kind:<10} {event.message}",
            flush=True,
        )
        last = event
    if last is not None:
        print(f"ended: {status_name(last.status)}")


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


COMMANDS = {
    "capacity": cmd_capacity,
    "place": cmd_place,
    "book": cmd_book,
    "bookings": cmd_bookings,
    "cancel": cmd_cancel,
    "confirm": cmd_confirm,
    "watch": cmd_watch,
    "offer": cmd_offer,
    "offers": cmd_offers,
    "buy": cmd_buy,
    "withdraw": cmd_withdraw,
}

EPILOG = """examples:
  interconnect capacity --model nvidia-a100-80g --hub IM
  interconnect place --model nvidia-a100-80g --count 16 --duration 4h --data-hub BTH --data-gb 500
  interconnect book --model nvidia-a100-80g --count 16 --duration 4h --key my-run-1 --watch
  interconnect book --model nvidia-a100-80g --count 8 --start "tomorrow 09:00" --hold
  interconnect watch BK-20261123-1A2B3C4D

Times without a zone are UTC; the command says back the time it understood. Errors print once
on stderr; exit status: 1 refused (or failed), 2 arguments refused before calling the broker,
3 not authenticated or not allowed, 4 not found, 5 capacity or quota exhausted, 6 a stale
version, 75 a conflict or outage after which the same command is safe to run again."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interconnect",
        description="The command line of Compute Interconnect for AI firms: find verified\n"
        "capacity, preview placements, book, confirm, list, cancel and watch bookings\n"
        "through the gRPC broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("INTERCONNECT_BROKER", "127.0.0.1:50051"),
        metavar="HOST:PORT",
        help="the gRPC broker (default: $INTERCONNECT_BROKER, else 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("INTERCONNECT_TOKEN", ""),
        metavar="TOKEN",
        help="your API token, ci_... (default: $INTERCONNECT_TOKEN); make one at /tokens/",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="deadline per call (default 10)",
    )
    parser.add_argument(
        "--ca",
        default=os.environ.get("INTERCONNECT_CA") or None,
        metavar="PEM",
        help="TLS to the broker, trusting this authority bundle, e.g. the deployment's ca.pem "
        "(default: $INTERCONNECT_CA)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="TLS to the broker with the system's authorities"
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    cap = sub.add_parser(
        "capacity",
        help="verified free capacity per pool",
        description="Verified pools with free accelerators over a window (default: the next "
        "hour), by pool id.",
    )
    cap.add_argument("--model", default="", help="accelerator model slug, e.g. nvidia-a100-80g")
    cap.add_argument("--hub", default="", help="hub code, e.g. NX, IM, GZ")
    cap.add_argument("--cluster", default="", help="cluster code, e.g. ZW, HRG, GAN")
    cap.add_argument("--interconnect", default="", help="fabric, e.g. nvlink, infiniband")
    cap.add_argument("--max-price", default="", help="max price per accelerator-hour, e.g. 12.50")
    cap.add_argument(
        "--start",
        type=moment,
        default=None,
        help=f"window start (default now), e.g. {START_FORMATS}",
    )
    cap.add_argument(
        "--end", type=moment, default=None, help="window end (default: an hour after the start)"
    )
    cap.add_argument("--page-size", type=int, default=200, help="pools per call (default 200)")
    place = sub.add_parser(
        "place",
        help="ranked placement options, explained (books nothing)",
        description="Ranked placement options with why, and every rejected pool with its reason.",
    )
    add_spec_arguments(place)
    place.add_argument("--options", type=int, default=5, help="options to show (default 5)")
    book = sub.add_parser("book", help="book a workload", description="Book a workload.")
    add_spec_arguments(book)
    book.add_argument(
        "--key",
        default="",
        help="idempotency key: the same key with the same request returns the first booking "
        "(retry freely); with another request it is refused (default: a new key)",
    )
    book.add_argument(
        "--option",
        type=option_part,
        action="append",
        default=[],
        help="POOL=N: book exactly these parts (repeatable)",
    )
    book.add_argument("--watch", action="store_true", help="then follow it to its end")
    book.add_argument("--hold", action="store_true", help="hold the capacity until `confirm`")
    lst = sub.add_parser("bookings", help="your bookings, newest first")
    lst.add_argument("--page-size", type=int, default=50, help="bookings to show (default 50)")
    confirm = sub.add_parser("confirm", help="confirm a held booking")
    confirm.add_argument("booking_id", help="e.g. BK-20261123-1A2B3C4D")
    cancel = sub.add_parser("cancel", help="cancel a booking")
    cancel.add_argument("booking_id", help="e.g. BK-20261123-1A2B3C4D")
    cancel.add_argument("--reason", default="", help="kept with the booking")
    watch = sub.add_parser("watch", help="follow a booking live, with each event's time")
    watch.add_argument("booking_id", help="e.g. BK-20261123-1A2B3C4D")
    offer = sub.add_parser("offer", help="offer a booking (or its later part) for resale")
    offer.add_argument("booking_id", help="e.g. BK-20261123-1A2B3C4D")
    offer.add_argument("--price", required=True, help="price for all of it, e.g. 120.00")
    offer.add_argument(
        "--from",
        dest="start",
        type=moment,
        default=None,
        help="offer only the part from this slot boundary on",
    )
    offers = sub.add_parser("offers", help="open resale offers, and yours")
    offers.add_argument("--page-size", type=int, default=50, help="offers per page (default 50)")
    buy = sub.add_parser("buy", help="buy a resale offer")
    buy.add_argument("offer_id", help="e.g. OF-20261123-1A2B3C4D")
    buy.add_argument("--image", default="", help="container image to run")
    buy.add_argument("--command", default="", help="command to run in the image")
    withdraw = sub.add_parser("withdraw", help="withdraw a resale offer of yours")
    withdraw.add_argument("offer_id", help="e.g. OF-20261123-1A2B3C4D")
    return parser


def exit_status_of(exc: grpc.RpcError) -> int:
    """The catalog's exit status for a failed call (its status code and ErrorInfo reason)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    reason = ""
    status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return exit_status(code, reason)


def describe(exc: grpc.RpcError) -> str:
    """The error once: its status, then each field violation (with its flag) or the message
    and its reason code."""
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    message = exc.details() if hasattr(exc, "details") else str(exc)
    status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
    violations: list[str] = []
    reason = ""
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations += [field_line(v.field, v.description) for v in bad.field_violations]
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    if violations:
        # The status message repeats the violations: print them once, by field.
        return "\n".join([f"error: {code}", *violations])
    lines = [f"error: {code}: {message}"]
    if reason:
        lines.append(f"  reason: {reason}")
    return "\n".join(lines)


# Options whose value may start with "-" (a negative number or duration): argparse would take
# "-2h" for an option; it is joined to its flag so that the range message is the answer.
SIGNED = re.compile(r"^-\d")


def join_signed(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if (
            arg.startswith("--")
            and "=" not in arg
            and i + 1 < len(args)
            and SIGNED.match(args[i + 1])
        ):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_signed(sys.argv[1:] if argv is None else argv))
    if not args.token:
        print("error: give --token or set INTERCONNECT_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    if args.ca and not os.access(args.ca, os.R_OK):
        print(f"error: --ca: cannot read the CA bundle {args.ca}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with BrokerClient(
            args.broker, args.token, timeout=args.timeout, ca=args.ca, tls=args.tls
        ) as client:
            COMMANDS[args.verb](client, args)
    except Refused as exc:
        print(f"error: invalid argument\n{field_line(exc.field, exc.message)}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        print(describe(exc), file=sys.stderr)
        return exit_status_of(exc)
    except ValueError as exc:
        # A value the request message cannot carry that no check above caught.
        print(f"error: invalid argument: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. piped into `head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
