"""``interconnect``: the command-line tool for AI firms (capacity, place, book, confirm, bookings,
cancel, watch), talking to the gRPC broker.

    interconnect --broker 127.0.0.1:50051 --token $TOKEN capacity --model nvidia-a100-80g
    interconnect place --model nvidia-a100-80g --count 16 --duration 4h --data-hub BTH --data-gb 500
    interconnect book --model nvidia-a100-80g --count 16 --duration 4h --key my-run-1 --watch
    interconnect watch BK-20261123-1A2B3C4D

``--broker`` and ``--token`` default to ``$INTERCONNECT_BROKER`` and ``$INTERCONNECT_TOKEN``.
Errors print the status and its details on stderr and exit 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from brokers.client.client import BrokerClient, timestamp, workload_spec
from protos import broker_pb2 as pb

DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``4h``, ``2d`` as seconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 4h)")
    return float(match["n"]) * UNITS[match["unit"]]


def moment(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


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
    g.add_argument("--model", default="", help="accelerator model (catalog slug)")
    g.add_argument("--count", type=int, default=0, help="accelerators of --model")
    g.add_argument("--a100-equivalents", type=float, default=0.0, help="any model worth N A100s")
    g.add_argument("--gang-size", type=int, default=1)
    g.add_argument("--min-per-node", type=int, default=0, help="minimum accelerators per node")
    g.add_argument("--interconnect", default="", help="required fabric, e.g. nvlink")
    g.add_argument("--trait", action="append", default=[], help="required pool trait")
    g.add_argument("--memory-gb", type=float, default=0.0, help="memory per accelerator")
    g.add_argument("--start", type=moment, default=None, help="earliest start (default now)")
    g.add_argument("--latest-end", type=moment, default=None)
    g.add_argument("--duration", type=duration_seconds, default=3600.0, help="e.g. 30m, 4h")
    g.add_argument("--hub", action="append", default=[], help="allowed hub (repeatable)")
    g.add_argument("--exclude-hub", action="append", default=[])
    g.add_argument("--data-hub", default="", help="hub where the data lives")
    g.add_argument("--data-gb", type=float, default=0.0, help="data to move, GB")
    g.add_argument(
        "--latency-class", choices=["interactive", "training", "batch"], default="training"
    )
    g.add_argument("--price-cap", default="", help="max price per accelerator-hour")
    g.add_argument("--split", action="store_true", help="may be split across centers")
    g.add_argument("--max-centers", type=int, default=1)
    g.add_argument("--image", default="")
    g.add_argument("--command", default="")


def spec_from_args(args: argparse.Namespace) -> pb.WorkloadSpec:
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
        filters["start"] = timestamp(args.start)
    if args.end:
        filters["end"] = timestamp(args.end)
    entries = list(client.capacity_all(**filters))
    print(
        table(
            ["pool", "hub", "model", "free", "of", "price/h", "green", "A100-eq"],
            [
                [
                    e.pool,
                    e.hub,
                    e.accelerator_model,
                    e.free,
                    e.accelerators,
                    f"{e.price_per_accelerator_hour} {e.currency}".strip(),
                    f"{e.green_power_share:.0%}",
                    f"{e.a100_equivalent_per_accelerator:.2f}",
                ]
                for e in entries
            ],
        )
    )
    print(f"{len(entries)} pools, {sum(e.free for e in entries)} accelerators free")


def cmd_place(client: BrokerClient, args: argparse.Namespace) -> None:
    result = client.place(spec_from_args(args), max_options=args.options)
    rows = []
    for rank, o in enumerate(result.options, 1):
        parts = " + ".join(f"{p.pool} x{p.accelerators}" for p in o.parts)
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
    """Live progress: one line per event as it happens, with the time since the watch began."""
    began = time.monotonic()
    last = None
    for event in client.watch(args.booking_id):
        elapsed = time.monotonic() - began
        print(
            f"[{elapsed:7.1f}s] {event.booking_id} {status_name(event.status):<11} "
            f"{event.kind:<10} {event.message}",
            flush=True,
        )
        last = event
    if last is not None:
        print(f"ended: {status_name(last.status)}")


COMMANDS = {
    "capacity": cmd_capacity,
    "place": cmd_place,
    "book": cmd_book,
    "bookings": cmd_bookings,
    "cancel": cmd_cancel,
    "confirm": cmd_confirm,
    "watch": cmd_watch,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interconnect", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--broker", default=os.environ.get("INTERCONNECT_BROKER", "127.0.0.1:50051")
    )
    parser.add_argument("--token", default=os.environ.get("INTERCONNECT_TOKEN", ""))
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    sub = parser.add_subparsers(dest="verb", required=True)
    cap = sub.add_parser("capacity", help="verified free capacity")
    cap.add_argument("--model", default="")
    cap.add_argument("--hub", default="")
    cap.add_argument("--cluster", default="")
    cap.add_argument("--interconnect", default="")
    cap.add_argument("--max-price", default="")
    cap.add_argument("--start", type=moment, default=None)
    cap.add_argument("--end", type=moment, default=None)
    cap.add_argument("--page-size", type=int, default=200)
    place = sub.add_parser("place", help="ranked placement options, explained")
    add_spec_arguments(place)
    place.add_argument("--options", type=int, default=5)
    book = sub.add_parser("book", help="book a workload")
    add_spec_arguments(book)
    book.add_argument("--key", default="", help="idempotency key (reuse it to retry safely)")
    book.add_argument(
        "--option",
        type=option_part,
        action="append",
        default=[],
        help="POOL=N: book exactly these parts (repeatable)",
    )
    book.add_argument("--watch", action="store_true", help="then follow it to its end")
    book.add_argument("--hold", action="store_true", help="hold the capacity until `confirm`")
    lst = sub.add_parser("bookings", help="your bookings")
    lst.add_argument("--page-size", type=int, default=50)
    confirm = sub.add_parser("confirm", help="confirm a held booking")
    confirm.add_argument("booking_id")
    cancel = sub.add_parser("cancel", help="cancel a booking")
    cancel.add_argument("booking_id")
    cancel.add_argument("--reason", default="")
    watch = sub.add_parser("watch", help="follow a booking live")
    watch.add_argument("booking_id")
    return parser


def describe(exc: grpc.RpcError) -> str:
    """The status, its message, and any field violations or reason in its details."""
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    lines = [f"error: {code}: {exc.details() if hasattr(exc, 'details') else exc}"]
    status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            lines.append(f"  reason: {info.reason}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.token:
        print("error: give --token or set INTERCONNECT_TOKEN", file=sys.stderr)
        return 2
    try:
        with BrokerClient(args.broker, args.token, timeout=args.timeout) as client:
            COMMANDS[args.verb](client, args)
    except grpc.RpcError as exc:
        print(describe(exc), file=sys.stderr)
        return 1
    except ValueError as exc:
        # A value the request message cannot carry (e.g. a negative count for a uint32 field).
        print(f"error: invalid argument: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. piped into `head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
