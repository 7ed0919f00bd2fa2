"""The names a request may use, and the refusal of a name nobody knows.

A typo must not read as "nothing free": an accelerator model, hub, cluster, trait or interconnect
that no catalog knows is refused as unknown (``ValidationError`` naming the field, with the
close matches ``difflib`` finds), at every door, for capacity, placement and booking. The doors
map the error as usual: HTTP 400 with field messages, gRPC INVALID_ARGUMENT with ``BadRequest``
field violations, the portal's field message, the command line's message and exit status 1.

What is known is public: the accelerator catalog, hubs and clusters, the seeded traits and the
traits and fabrics of listed pools (never those of a draft pool, so the answer tells nothing
about another tenant's unlisted objects). The names are kept per process and read again from the
database whenever a name is missing from them, so a known name costs no query and a new one is
found at once.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

# Fabric names a request may ask for even before a listed pool declares them.
FABRICS = (
    "nvlink",
    "nvswitch",
    "infiniband",
    "roce",
    "rdma",
    "hccs",
    "ethernet",
    "pcie",
    "ndr",
    "hdr",
    "mlink",
    "xgmi",
)

WHAT = {
    "accelerator_model": "accelerator model",
    "hub": "hub",
    "cluster": "cluster",
    "trait": "trait",
    "interconnect": "interconnect",
}
WHERE = {
    "accelerator_model": "/api/v1/accelerators/",
    "hub": "/api/v1/hubs/",
    "cluster": "/api/v1/clusters/",
}


@dataclass(frozen=True)
class Names:
    models: frozenset[str] = frozenset()
    hubs: frozenset[str] = frozenset()
    clusters: frozenset[str] = frozenset()
    traits: frozenset[str] = frozenset()
    fabrics: tuple[str, ...] = ()
    words: frozenset[str] = field(default_factory=frozenset)

    def knows(self, kind: str, name: str) -> bool:
        if kind == "accelerator_model":
            return name in self.models
        if kind == "hub":
            return name in self.hubs
        if kind == "cluster":
            return name in self.clusters
        if kind == "trait":
            return name in self.traits
        wanted = name.lower()
        return wanted in self.traits or any(wanted in f for f in self.fabrics)

    def choices(self, kind: str) -> Iterable[str]:
        return {
            "accelerator_model": self.models,
            "hub": self.hubs,
            "cluster": self.clusters,
            "trait": self.traits,
            "interconnect": self.words,
        }[kind]


_names = Names()
_lock = threading.Lock()


def _load() -> Names:
    from registry.choices import LISTED_STATUSES
    from registry.management.commands.seed_national_topology import TRAITS
    from registry.models import Accelerator, Cluster, Hub, Pool

    listed = Pool.objects.filter(status__in=LISTED_STATUSES, center__status__in=LISTED_STATUSES)
    traits = set(TRAITS) | set(
        listed.filter(traits__isnull=False).values_list("traits__slug", flat=True).distinct()
    )
    fabrics = {
        text.lower()
        for pair in listed.values_list("intra_node_interconnect", "inter_node_interconnect")
        for text in pair
        if text
    } | set(FABRICS)
    words = {w for text in fabrics for w in text.split() if not w.isdigit()} | traits
    return Names(
        models=frozenset(Accelerator.objects.values_list("slug", flat=True)),
        hubs=frozenset(Hub.objects.values_list("code", flat=True)),
        clusters=frozenset(Cluster.objects.values_list("code", flat=True)),
        traits=frozenset(traits),
        fabrics=tuple(sorted(fabrics)),
        words=frozenset(words),
    )


def refresh() -> Names:
    """Read the names again from the database (on a miss, and in tests)."""
    global _names
    names = _load()
    with _lock:
        _names = names
    return names


def unknown_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """``Unknown hub "NXX". Did you mean NX?``: the one message of every door."""
    pool = sorted(choices)
    folded = {c.lower(): c for c in pool}
    close = [folded[c] for c in difflib.get_close_matches(name.lower(), list(folded), n=3)]
    message = f'Unknown {WHAT[kind]} "{name}".'
    if close:
        return f"{message} Did you mean {' or '.join(close)}?"
    where = WHERE.get(kind)
    known = f"see {where}" if where else "known: " + ", ".join(pool[:12])
    return f"{message} No close match ({known})."


def check(**fields: tuple[str, Iterable[str]]) -> None:
    """Refuse unknown names: ``check(hubs_allowed=("hub", ["NX", "XX"]))`` maps each request
    field to the kind of name and the names it gives; ``ValidationError`` lists every unknown
    one under its field."""
    asked = [(f, kind, n) for f, (kind, names) in fields.items() for n in names if n]
    if not asked:
        return
    names = _names
    if any(not names.knows(kind, n) for _, kind, n in asked):
        names = refresh()
    errors: dict[str, list[str]] = {}
    for f, kind, n in asked:
        if not names.knows(kind, n):
            errors.setdefault(f, []).append(unknown_message(kind, n, names.choices(kind)))
    if errors:
        raise ValidationError(errors)


def check_spec(spec: object) -> None:
    """Every name of a workload specification (``brokers.placement.WorkloadSpec``)."""
    check(
        accelerator_model=("accelerator_model", [getattr(spec, "accelerator_model", "")]),
        hubs_allowed=("hub", getattr(spec, "hubs_allowed", ())),
        hubs_excluded=("hub", getattr(spec, "hubs_excluded", ())),
        data_hub=("hub", [getattr(spec, "data_hub", "")]),
        traits=("trait", getattr(spec, "traits", ())),
        interconnect=("interconnect", [getattr(spec, "interconnect", "")]),
    )
