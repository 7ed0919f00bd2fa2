"""The national programme's topology: hubs, the clusters under them, and links between hubs."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from registry.choices import LinkSource, Region

LATITUDE = [MinValueValidator(-90), MaxValueValidator(90)]
LONGITUDE = [MinValueValidator(-180), MaxValueValidator(180)]


def coordinate_constraints(prefix: str) -> list[models.BaseConstraint]:
    """Check constraints that keep a (latitude, longitude) pair on the globe."""
    return [
        models.CheckConstraint(
            condition=Q(latitude__gte=-90, latitude__lte=90),
            name=f"{prefix}_latitude_range",
            violation_error_message="Latitude must be between -90 and 90.",
        ),
        models.CheckConstraint(
            condition=Q(longitude__gte=-180, longitude__lte=180),
            name=f"{prefix}_longitude_range",
            violation_error_message="Longitude must be between -180 and 180.",
        ),
    ]


class Hub(models.Model):
    """A national computing hub of "Eastern Data, Western Computing" (8 in all).

    Eastern hubs hold data and demand; western hubs hold cheap, often green power.
    """

    code = models.SlugField(max_length=8, unique=True, help_text="Short code, e.g. BTH.")
    name = models.CharField(max_length=120, unique=True)
    region = models.CharField(max_length=8, choices=Region.choices)
    latitude = models.FloatField(validators=LATITUDE)
    longitude = models.FloatField(validators=LONGITUDE)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["code"]
        constraints = coordinate_constraints("hub")

    def __str__(self) -> str:
        return self.name


class Cluster(models.Model):
    """A data-center cluster designated under a hub (10 in all), e.g. Zhangjiakou under BTH."""

    hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="clusters")
    code = models.SlugField(max_length=8, unique=True, help_text="Short code, e.g. ZJK.")
    name = models.CharField(max_length=160, unique=True)
    province = models.CharField(max_length=60, blank=True)
    latitude = models.FloatField(validators=LATITUDE)
    longitude = models.FloatField(validators=LONGITUDE)
    # Next center sequence number in this cluster; read and bumped under a row lock so that
    # national identifiers are dense and never reused.
    next_center_seq = models.PositiveIntegerField(default=1, editable=False)

    class Meta:
        ordering = ["hub__code", "code"]
        constraints = coordinate_constraints("cluster")

    def __str__(self) -> str:
        return self.name


class HubLink(models.Model):
    """A network link between two hubs, used to estimate data-transfer time.

    Seeded values are ``declared`` (plausible, from published backbone figures); measurements by
    the platform replace them and are marked ``measured``. Stored once per unordered pair with
    ``a.code < b.code``.
    """

    a = models.ForeignKey(Hub, on_delete=models.CASCADE, related_name="+")
    b = models.ForeignKey(Hub, on_delete=models.CASCADE, related_name="+")
    latency_ms = models.FloatField(validators=[MinValueValidator(0)])
    bandwidth_gbps = models.FloatField(validators=[MinValueValidator(0.001)])
    source = models.CharField(
        max_length=10, choices=LinkSource.choices, default=LinkSource.DECLARED
    )
    measured_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["a__code", "b__code"]
        constraints = [
            models.UniqueConstraint(
                fields=["a", "b"],
                name="hublink_unique_pair",
                violation_error_message="A link between these hubs already exists.",
            ),
            models.CheckConstraint(
                condition=~Q(a=F("b")),
                name="hublink_distinct_ends",
                violation_error_message="A link joins two different hubs.",
            ),
            models.CheckConstraint(
                condition=Q(latency_ms__gte=0) & Q(bandwidth_gbps__gt=0),
                name="hublink_positive_figures",
                violation_error_message="Latency must be >= 0 and bandwidth > 0.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.a.code}<->{self.b.code}"
