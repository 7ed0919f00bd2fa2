"""Geometry for the portal's server-side SVG charts.

Pure functions: they turn rows the selectors return into coordinates, and templates draw them
(``templates/charts/*.html``). Nothing is fetched from the network; a page with a chart is one
HTML response.
"""

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A schematic outline of China's mainland, Hainan and Taiwan as (longitude, latitude) pairs,
# rounded to half a degree: enough to place hubs recognisably, not a survey.
CHINA_OUTLINE: tuple[tuple[float, float], ...] = (
    (122.5, 53.5), (125.5, 53.0), (127.5, 50.0), (130.5, 48.8), (133.0, 48.3), (134.7, 48.3),
    (133.2, 45.0), (131.0, 44.8), (131.3, 43.0), (130.6, 42.4), (128.0, 41.5), (125.0, 40.0),
    (121.5, 39.0), (121.0, 40.8), (119.5, 39.8), (117.8, 39.0), (118.8, 37.5), (120.7, 37.8),
    (122.5, 37.0), (120.3, 36.0), (119.2, 35.0), (120.8, 32.5), (121.9, 31.0), (122.0, 29.8),
    (121.0, 28.0), (119.6, 26.0), (118.0, 24.5), (116.5, 23.0), (114.2, 22.3), (113.0, 22.0),
    (110.5, 21.2), (108.0, 21.5), (106.7, 22.0), (105.5, 23.2), (103.0, 22.5), (101.7, 21.2),
    (101.0, 21.8), (99.5, 22.1), (98.7, 24.0), (97.5, 24.8), (98.7, 27.5), (97.0, 28.2),
    (95.5, 29.0), (92.0, 27.8), (89.0, 27.5), (88.0, 27.9), (86.0, 28.0), (84.0, 28.6),
    (81.5, 30.2), (79.0, 31.5), (78.7, 34.0), (77.8, 35.5), (75.0, 37.0), (73.6, 39.5),
    (74.0, 40.5), (76.0, 40.5), (78.0, 41.2), (80.2, 42.1), (80.3, 44.9), (82.5, 45.3),
    (83.0, 47.2), (85.5, 47.1), (87.3, 49.1), (90.0, 47.8), (91.0, 46.0), (93.0, 44.9),
    (95.5, 44.2), (97.0, 42.8), (100.0, 42.6), (105.0, 41.6), (107.0, 42.4), (110.5, 42.6),
    (111.9, 43.7), (114.5, 45.4), (116.5, 46.5), (119.7, 46.6), (117.5, 46.6), (115.6, 47.8),
    (117.4, 49.6), (119.4, 50.3), (120.8, 52.5),
)  # fmt: skip
ISLANDS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((108.6, 19.2), (110.0, 20.1), (111.0, 19.6), (110.0, 18.3), (108.7, 18.5)),
    ((120.1, 23.0), (121.0, 25.1), (121.9, 25.0), (121.5, 23.0), (120.8, 21.9)),
)

# Equirectangular projection around 36°N: the map's frame in degrees and pixels per degree.
MAP_WEST, MAP_NORTH, MAP_SOUTH, MAP_EAST = 72.0, 54.5, 17.5, 136.0
MAP_SCALE = 9.0
MAP_X_SCALE = MAP_SCALE * math.cos(math.radians(36))
MAP_WIDTH = round((MAP_EAST - MAP_WEST) * MAP_X_SCALE)
MAP_HEIGHT = round((MAP_NORTH - MAP_SOUTH) * MAP_SCALE)

REGION_COLORS = {"east": "#0b6bcb", "west": "#1f8a4c"}


def project(longitude: float, latitude: float) -> tuple[float, float]:
    """Map coordinates (x right, y down) of a point on the schematic map."""
    return (
        round((longitude - MAP_WEST) * MAP_X_SCALE, 1),
        round((MAP_NORTH - latitude) * MAP_SCALE, 1),
    )


def _points(ring: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{x},{y}" for x, y in (project(lon, lat) for lon, lat in ring))


def national_map(
    *,
    hubs: Sequence[Any],
    clusters: Sequence[Any],
    links: Sequence[Any],
    hub_capacity: dict[str, float],
    cluster_capacity: dict[str, float],
) -> dict[str, Any]:
    """The schematic map: hubs as circles sized by capacity (area ∝ A100-equivalents), coloured
    east or west, clusters as small dots, and the declared or measured links between hubs."""
    largest = max([*hub_capacity.values(), 1.0])
    positions = {}
    hub_marks = []
    for hub in hubs:
        x, y = project(hub.longitude, hub.latitude)
        positions[hub.pk] = (x, y)
        capacity = hub_capacity.get(hub.code, 0.0)
        hub_marks.append(
            {
                "code": hub.code,
                "name": hub.name,
                "region": hub.region,
                "x": x,
                "y": y,
                # Area proportional to capacity; a floor keeps empty hubs visible.
                "r": (r := round(6 + 28 * math.sqrt(capacity / largest), 1)),
                "label_y": round(y - r - 4, 1),
                "color": REGION_COLORS.get(hub.region, "#555"),
                "capacity": capacity,
            }
        )
    cluster_marks = []
    for cluster in clusters:
        x, y = project(cluster.longitude, cluster.latitude)
        cluster_marks.append(
            {
                "code": cluster.code,
                "name": cluster.name,
                "x": x,
                "y": y,
                "capacity": cluster_capacity.get(cluster.code, 0.0),
            }
        )
    link_marks = []
    for link in links:
        if link.a_id in positions and link.b_id in positions:
            (x1, y1), (x2, y2) = positions[link.a_id], positions[link.b_id]
            link_marks.append(
                {
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    # Wider lines for fatter pipes (bandwidth classes differ by powers of two).
                    "w": round(0.6 + math.log2(max(link.bandwidth_gbps, 1.0) / 100.0 + 1), 2),
                    "title": f"{link.a.code}–{link.b.code}: {link.latency_ms:.0f} ms, "
                    f"{link.bandwidth_gbps:.0f} Gb/s ({link.source})",
                }
            )
    return {
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "outline": _points(CHINA_OUTLINE),
        "islands": [_points(ring) for ring in ISLANDS],
        "hubs": hub_marks,
        "clusters": cluster_marks,
        "links": link_marks,
    }


@dataclass
class Bar:
    label: str
    value: float
    part: float  # the highlighted part of the value (e.g. verified)
    y: float = 0.0
    width: float = 0.0
    part_width: float = 0.0
    title: str = ""


@dataclass
class BarChart:
    bars: list[Bar] = field(default_factory=list)
    width: int = 560
    height: int = 0
    label_width: int = 170
    bar_height: int = 18
    unit: str = ""


def bar_chart(
    rows: Iterable[dict[str, Any]],
    *,
    label: str,
    value: str,
    part: str | None = None,
    unit: str = "",
    labels: dict[str, str] | None = None,
) -> BarChart:
    """Horizontal bars, longest first; ``part`` draws a highlighted share inside each bar."""
    chart = BarChart(unit=unit)
    data = sorted(rows, key=lambda r: r[value] or 0, reverse=True)
    largest = max([float(r[value] or 0) for r in data] + [1.0])
    span = chart.width - chart.label_width - 70
    for i, row in enumerate(data):
        v = float(row[value] or 0)
        p = float(row[part] or 0) if part else 0.0
        name = str(row[label])
        chart.bars.append(
            Bar(
                label=(labels or {}).get(name, name),
                value=v,
                part=p,
                y=i * (chart.bar_height + 8),
                width=round(span * v / largest, 1),
                part_width=round(span * p / largest, 1),
                title=f"{name}: {v:,.1f} {unit}",
            )
        )
    chart.height = max(len(chart.bars), 1) * (chart.bar_height + 8)
    return chart


def line_chart(
    points: Sequence[tuple[dt.datetime, float]],
    *,
    width: int = 560,
    height: int = 160,
    y_max: float | None = None,
    unit: str = "",
) -> dict[str, Any]:
    """A time series as an SVG polyline, with the first/last times and the maximum labelled."""
    if not points:
        return {"empty": True, "width": width, "height": height}
    pad = 30
    t0, t1 = points[0][0], points[-1][0]
    span = max((t1 - t0).total_seconds(), 1.0)
    top = y_max if y_max is not None else max(v for _, v in points) or 1.0
    coords, dots = [], []
    for t, v in points:
        x = pad + (width - 2 * pad) * (t - t0).total_seconds() / span
        y = height - pad - (height - 2 * pad) * min(v / top, 1.0)
        coords.append(f"{x:.1f},{y:.1f}")
        dots.append({"x": round(x, 1), "y": round(y, 1), "t": t, "v": v})
    return {
        "empty": False,
        "width": width,
        "height": height,
        "pad": pad,
        "points": " ".join(coords),
        # Markers only while they stay readable; a lone point has no line to show it.
        "dots": dots if len(dots) <= 60 else [],
        "start": t0,
        "end": t1,
        "top": top,
        "unit": unit,
        "base_y": height - pad,
        "right_x": width - pad,
    }


STATUS_HEX = {
    "gray": "#757575",
    "blue": "#1565c0",
    "indigo": "#3949ab",
    "green": "#1f8a4c",
    "orange": "#c77700",
    "red": "#c62828",
    "purple": "#6a1b9a",
    "black": "#222222",
}


def status_timeline(
    *,
    transitions: Sequence[Any],
    initial: str,
    since: dt.datetime,
    until: dt.datetime,
    colors: dict[str, str],
    up: frozenset[str],
    width: int = 560,
) -> dict[str, Any]:
    """A pool's status over a window as coloured segments, and the share of it spent ``up``.

    ``transitions`` are the pool's lifecycle transitions in time order; ``initial`` is its status
    at ``since`` (before the first transition in the window).
    """
    total = max((until - since).total_seconds(), 1.0)
    segments = []
    status, start = initial, since
    up_seconds = 0.0
    for tr in [*transitions, None]:
        end = until if tr is None else max(min(tr.time, until), since)
        seconds = (end - start).total_seconds()
        if seconds > 0:
            segments.append(
                {
                    "status": status,
                    "x": round(width * (start - since).total_seconds() / total, 2),
                    "w": round(max(width * seconds / total, 0.5), 2),
                    "color": STATUS_HEX.get(colors.get(status, "gray"), "#757575"),
                    "start": start,
                    "end": end,
                }
            )
            if status in up:
                up_seconds += seconds
        if tr is not None:
            status, start = tr.to_status, end
    return {"segments": segments, "width": width, "up_share": up_seconds / total}


def column_chart(
    columns: Sequence[tuple[str, float | None]],
    *,
    width: int = 560,
    height: int = 120,
    top: float = 1.0,
) -> dict[str, Any]:
    """Vertical columns (one per day, say) scaled to ``top``; a None value is drawn as a gap
    with a dotted outline, meaning "nothing known", which differs from zero."""
    pad_bottom = 18
    n = max(len(columns), 1)
    slot = width / n
    bars = []
    for i, (label, value) in enumerate(columns):
        h = 0.0 if value is None else (height - pad_bottom) * min(value / top, 1.0)
        bars.append(
            {
                "x": round(i * slot + 1, 1),
                "w": round(max(slot - 2, 1), 1),
                "y": round(height - pad_bottom - h, 1),
                "h": round(h, 1),
                "label": label,
                "value": value,
                "known": value is not None,
            }
        )
    return {"bars": bars, "width": width, "height": height, "base": height - pad_bottom}


def flow_arcs(
    *, hubs: Sequence[dict[str, Any]], flows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Curved arrows from the hub holding the data to the hub serving the work, width by volume
    (``accelerator_hours``); demand served in its own hub is a ring, not an arrow."""
    where = {h["code"]: (h["x"], h["y"]) for h in hubs}
    largest = max([f["accelerator_hours"] for f in flows] + [1e-9])
    arcs = []
    for flow in flows:
        if flow["origin"] not in where or flow["served"] not in where:
            continue
        (x1, y1), (x2, y2) = where[flow["origin"]], where[flow["served"]]
        width = round(1 + 7 * flow["accelerator_hours"] / largest, 1)
        title = (
            f"data in {flow['origin']}, served in {flow['served']}: "
            f"{flow['accelerator_hours']:,.0f} accelerator-hours"
        )
        if (x1, y1) == (x2, y2):
            arcs.append({"ring": True, "x": x1, "y": y1, "w": width, "title": title})
            continue
        # Bend the arrow to the left of its direction so that A->B and B->A do not overlap.
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        dx, dy = x2 - x1, y2 - y1
        cx, cy = round(mx - dy * 0.2, 1), round(my + dx * 0.2, 1)
        arcs.append(
            {"ring": False, "d": f"M{x1},{y1} Q{cx},{cy} {x2},{y2}", "w": width, "title": title}
        )
    return arcs


# Colours of a verification trend's marks: a pass, a pass flagged as drift, a failure.
TREND_HEX = {"passed": "#0b6bcb", "drift": "#c77700", "failed": "#c62828"}


def trend_chart(
    points: Sequence[dict[str, Any]],
    *,
    declared: float | None,
    width: int = 560,
    height: int = 200,
    unit: str = " TFLOPS",
) -> dict[str, Any]:
    """Measured throughput run after run, with the declared figure and the drift floor.

    ``points`` are runs oldest first, each ``{"time", "value", "kind", "floor"}``: ``value`` the
    measured figure (None when the run measured nothing, e.g. a wrong product), ``kind`` one of
    ``TREND_HEX``, ``floor`` the figure below which that run counted as drift (None before the
    pool had a record). Runs are evenly spaced (re-verification intervals are jittered, so time
    would bunch them), the y axis starts at zero so a 15 % fall looks like one, a line joins the
    passes, failures are crosses (on the axis when they measured nothing) and the floor is a
    dashed step line: it moves with the record each run was judged against.
    """
    if not points:
        return {"empty": True, "width": width, "height": height}
    pad_left, pad_right, pad_y = 44, 16, 22
    values = [p["value"] for p in points if p["value"] is not None]
    floors = [p["floor"] for p in points if p["floor"] is not None]
    top = float(max([*values, *floors, declared or 0.0, 1e-9])) * 1.1
    base_y = height - pad_y
    span_x = width - pad_left - pad_right
    step = span_x / max(len(points) - 1, 1)

    def y_of(value: float) -> float:
        return round(base_y - (height - 2 * pad_y) * value / top, 1)

    marks = []
    for i, p in enumerate(points):
        # A lone run sits in the middle rather than on the axis.
        x = round(pad_left + (i * step if len(points) > 1 else span_x / 2), 1)
        measured = p["value"] is not None
        y = y_of(p["value"]) if measured else base_y
        figure = f"{p['value']:,.1f}{unit}" if measured else "nothing measured"
        marks.append(
            {
                "x": x,
                "y": y,
                "kind": p["kind"],
                "color": TREND_HEX.get(p["kind"], "#757575"),
                "measured": measured,
                "floor_y": None if p["floor"] is None else y_of(p["floor"]),
                # A failure is a cross centred on its figure.
                "cross": f"M{x - 4:.1f},{y - 4:.1f} l8,8 m0,-8 l-8,8",
                "title": f"{p['time']:%Y-%m-%d %H:%M} {p['kind']}: {figure}",
            }
        )
    passes = [m for m in marks if m["kind"] != "failed" and m["measured"]]
    # The floor as horizontal steps: each run's floor spans half-way to its neighbours.
    floor_d = []
    half = step / 2 if len(points) > 1 else span_x / 2
    for m in marks:
        if m["floor_y"] is None:
            continue
        x0 = round(max(m["x"] - half, pad_left), 1)
        x1 = round(min(m["x"] + half, width - pad_right), 1)
        floor_d.append(f"M{x0},{m['floor_y']} H{x1}")
    return {
        "empty": False,
        "width": width,
        "height": height,
        "pad_left": pad_left,
        "right_x": width - pad_right,
        "top_y": pad_y,
        "base_y": base_y,
        "top": top,
        "unit": unit,
        "marks": marks,
        "line": " ".join(f"{m['x']},{m['y']}" for m in passes),
        "floor_d": " ".join(floor_d),
        "declared": declared,
        "declared_y": None if declared is None else y_of(declared),
        "start": points[0]["time"],
        "end": points[-1]["time"],
        "label_y": height - 4,
    }
