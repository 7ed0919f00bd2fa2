"""What ``--start`` accepts (no broker, no database): what people type, said back with its zone."""

import datetime as dt

import pytest

from brokers.client import cli


def test_start_times_as_people_type_them() -> None:
    now = dt.datetime(2026, 11, 30, 22, 15, tzinfo=dt.UTC)
    assert cli.moment("2026-12-01 09:00", now=now) == dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    assert cli.moment("+2h", now=now) == now + dt.timedelta(hours=2)
    assert cli.moment("+1h30m", now=now) == now + dt.timedelta(minutes=90)
    assert cli.moment("tomorrow 09:00", now=now) == dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    shanghai = cli.moment("tomorrow 09:00 Asia/Shanghai", now=now)
    # 22:15 UTC is already 06:15 on 1 December in Shanghai: tomorrow there is 2 December.
    assert shanghai.astimezone(dt.UTC) == dt.datetime(2026, 12, 2, 1, tzinfo=dt.UTC)
    assert cli.said_back(shanghai) == "2026-12-02 09:00:00 CST (2026-12-02 01:00:00 UTC)"
    assert cli.moment("2026-12-01T09:00+08:00").utcoffset() == dt.timedelta(hours=8)
    for bad in ("next week", "tomorrow 25:00", "2026-13-01", "+2 weeks", "09:00 Mars/Base"):
        with pytest.raises(Exception, match="not a time|unknown time zone"):
            cli.moment(bad, now=now)
