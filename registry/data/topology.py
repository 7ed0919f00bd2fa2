"""The national programme's hubs and clusters, and declared links between hubs.

Hubs and clusters: the 8 national computing hubs and 10 data-center clusters of "Eastern Data,
Western Computing" (NDRC and partners, February 2022). Coordinates are those of each hub's or
cluster's principal city or district, to two decimals.

Links are *declared* estimates until the platform measures them: round-trip latency from the
great-circle distance at two thirds of the speed of light with a 1.4 route factor plus 2 ms of
equipment, and backbone bandwidth by class (east-east 800 Gb/s, east-west 400 Gb/s, west-west
200 Gb/s). They are marked ``declared`` in the database.
"""

import math
from typing import TypedDict


class HubRow(TypedDict):
    code: str
    name: str
    region: str
    latitude: float
    longitude: float


class ClusterRow(TypedDict):
    hub: str
    code: str
    name: str
    province: str
    latitude: float
    longitude: float


HUBS: list[HubRow] = [
    {
        "code": "BTH",
        "name": "Beijing-Tianjin-Hebei",
        "region": "east",
        "latitude": 39.90,
        "longitude": 116.40,
    },
    {
        "code": "YRD",
        "name": "Yangtze River Delta",
        "region": "east",
        "latitude": 31.23,
        "longitude": 121.47,
    },
    {
        "code": "GBA",
        "name": "Guangdong-Hong Kong-Macao Greater Bay Area",
        "region": "east",
        "latitude": 22.54,
        "longitude": 114.06,
    },
    {
        "code": "CC",
        "name": "Chengdu-Chongqing",
        "region": "east",
        "latitude": 30.57,
        "longitude": 104.07,
    },
    {
        "code": "IM",
        "name": "Inner Mongolia",
        "region": "west",
        "latitude": 40.84,
        "longitude": 111.75,
    },
    {"code": "GZ", "name": "Guizhou", "region": "west", "latitude": 26.65, "longitude": 106.63},
    {"code": "GS", "name": "Gansu", "region": "west", "latitude": 36.06, "longitude": 103.83},
    {"code": "NX", "name": "Ningxia", "region": "west", "latitude": 38.47, "longitude": 106.27},
]

CLUSTERS: list[ClusterRow] = [
    {
        "hub": "BTH",
        "code": "ZJK",
        "name": "Zhangjiakou",
        "province": "Hebei",
        "latitude": 40.77,
        "longitude": 114.88,
    },
    {
        "hub": "YRD",
        "code": "YRDGI",
        "name": "Yangtze River Delta Ecological Green Integration Demonstration Zone",
        "province": "Shanghai/Jiangsu/Zhejiang",
        "latitude": 31.05,
        "longitude": 120.90,
    },
    {
        "hub": "YRD",
        "code": "WUH",
        "name": "Wuhu",
        "province": "Anhui",
        "latitude": 31.33,
        "longitude": 118.38,
    },
    {
        "hub": "GBA",
        "code": "SGN",
        "name": "Shaoguan",
        "province": "Guangdong",
        "latitude": 24.81,
        "longitude": 113.60,
    },
    {
        "hub": "CC",
        "code": "TFU",
        "name": "Tianfu",
        "province": "Sichuan",
        "latitude": 30.41,
        "longitude": 104.07,
    },
    {
        "hub": "CC",
        "code": "CQ",
        "name": "Chongqing",
        "province": "Chongqing",
        "latitude": 29.56,
        "longitude": 106.55,
    },
    {
        "hub": "IM",
        "code": "HRG",
        "name": "Horinger",
        "province": "Inner Mongolia",
        "latitude": 40.38,
        "longitude": 111.82,
    },
    {
        "hub": "GZ",
        "code": "GAN",
        "name": "Gui'an",
        "province": "Guizhou",
        "latitude": 26.37,
        "longitude": 106.38,
    },
    {
        "hub": "GS",
        "code": "QY",
        "name": "Qingyang",
        "province": "Gansu",
        "latitude": 35.71,
        "longitude": 107.64,
    },
    {
        "hub": "NX",
        "code": "ZW",
        "name": "Zhongwei",
        "province": "Ningxia",
        "latitude": 37.51,
        "longitude": 105.19,
    },
]


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def declared_link(a: HubRow, b: HubRow) -> tuple[float, float]:
    """(round-trip latency in ms, bandwidth in Gb/s) declared for a link between two hubs."""
    km = great_circle_km(a["latitude"], a["longitude"], b["latitude"], b["longitude"])
    rtt_ms = round(2 * km * 1.4 / 200.0 + 2.0, 1)  # light in fibre: ~200 km per ms
    regions = {a["region"], b["region"]}
    bandwidth = 800.0 if regions == {"east"} else 200.0 if regions == {"west"} else 400.0
    return rtt_ms, bandwidth
