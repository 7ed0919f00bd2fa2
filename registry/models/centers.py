"""Compute centers and the resource pools inside them."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from registry.choices import Precision, Status

from .catalog import Accelerator, Trait
from .orgs import Organization
from .topology import LATITUDE, LONGITUDE, Cluster, coordinate_constraints


class LifecycleMixin(models.Model):
    """Status fields shared by centers and pools.

    ``status`` is written only by ``registry.services.lifecycle_transition`` (compare-and-set on
    the old value); ``version`` increases on every write and serves optimistic concurrency.
    """

    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.DRAFT, db_index=True, editable=False
    )
    status_reason = models.CharField(max_length=500, blank=True, editable=False)
    status_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Center(LifecycleMixin):
    """A compute center: a site run by an operator inside a national cluster.

    Its ``national_id`` (``CN-<hub>-<cluster>-<nnnn>``) is assigned once at registration and never
    changes; every door addresses the center by it. The platform tests the center through the site
    agent at ``agent_endpoint``.
    """

    national_id = models.CharField(max_length=32, unique=True, editable=False)
    operator = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="centers")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="centers")
    name = models.CharField(max_length=160)
    latitude = models.FloatField(validators=LATITUDE)
    longitude = models.FloatField(validators=LONGITUDE)
    pue = models.FloatField(
        validators=[MinValueValidator(1.0), MaxValueValidator(3.0)],
        help_text="Power usage effectiveness (total facility power / IT power), 1.0-3.0.",
    )
    green_power_share = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of the center's power from renewable sources, 0-1.",
    )
    agent_endpoint = models.CharField(
        max_length=255, blank=True, help_text="host:port of the site agent's gRPC server."
    )
    next_pool_seq = models.PositiveIntegerField(default=1, editable=False)

    class Meta:
        ordering = ["national_id"]
        constraints = [
            *coordinate_constraints("center"),
            models.UniqueConstraint(
                fields=["operator", "name"],
                name="center_unique_name_per_operator",
                violation_error_message="This operator already has a center with this name.",
            ),
            models.CheckConstraint(
                condition=Q(pue__gte=1.0, pue__lte=3.0),
                name="center_pue_range",
                violation_error_message="PUE must be between 1.0 and 3.0.",
            ),
            models.CheckConstraint(
                condition=Q(green_power_share__gte=0.0, green_power_share__lte=1.0),
                name="center_green_share_range",
                violation_error_message="Green power share must be between 0 and 1.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.national_id} {self.name}"


class Pool(LifecycleMixin):
    """A homogeneous group of accelerators in a center: one model, same nodes, same fabric.

    Capacity is ``nodes * accelerators_per_node`` (``accelerators``, computed by the database).
    ``national_id`` is the center's identifier plus ``-P<nn>``. ``measured_tflops_per_accelerator``
    is written by verification, never by the operator.
    """

    national_id = models.CharField(max_length=40, unique=True, editable=False)
    center = models.ForeignKey(Center, on_delete=models.PROTECT, related_name="pools")
    name = models.CharField(max_length=160)
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="pools")
    accelerators_per_node = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    nodes = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    accelerators = models.GeneratedField(
        expression=F("nodes") * F("accelerators_per_node"),
        output_field=models.PositiveIntegerField(),
        db_persist=True,
    )
    intra_node_interconnect = models.CharField(max_length=60, blank=True)
    intra_node_bandwidth_gbps = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0)], help_text="GB/s per accelerator"
    )
    inter_node_interconnect = models.CharField(max_length=60, blank=True)
    inter_node_bandwidth_gbps = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0)], help_text="Gb/s per node"
    )
    price_per_accelerator_hour = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    currency = models.CharField(max_length=3, blank=True, help_text="ISO 4217, e.g. CNY.")
    spot_discount_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Spot bookings pay the price less this share (they may be preempted).",
    )
    declared_tflops_per_accelerator = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)]
    )
    declared_precision = models.CharField(
        max_length=4,
        choices=Precision.choices,
        default=Precision.BF16,
        help_text="The arithmetic the declared throughput is about; verification uses it.",
    )
    measured_tflops_per_accelerator = models.FloatField(null=True, blank=True, editable=False)
    verified_at = models.DateTimeField(null=True, blank=True, editable=False)
    traits = models.ManyToManyField(Trait, blank=True, related_name="pools")

    class Meta:
        ordering = ["national_id"]
        indexes = [
            # Capacity queries filter by model and status first.
            models.Index(fields=["accelerator", "status"], name="pool_model_status_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["center", "name"],
                name="pool_unique_name_per_center",
                violation_error_message="This center already has a pool with this name.",
            ),
            models.CheckConstraint(
                condition=Q(accelerators_per_node__gte=1) & Q(nodes__gte=1),
                name="pool_positive_counts",
                violation_error_message="Accelerators per node and nodes must be at least 1.",
            ),
            models.CheckConstraint(
                condition=Q(price_per_accelerator_hour__isnull=True)
                | (Q(price_per_accelerator_hour__gte=0) & ~Q(currency="")),
                name="pool_price_has_currency",
                violation_error_message="A price needs a currency and must not be negative.",
            ),
            models.CheckConstraint(
                condition=Q(spot_discount_percent__gte=0) & Q(spot_discount_percent__lte=100),
                name="pool_spot_discount_percent",
                violation_error_message="A spot discount is between 0 and 100 percent.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.national_id} {self.name}"

    def clean(self) -> None:
        # The database constraint is the backstop; this gives the message a field to sit on.
        if self.price_per_accelerator_hour is not None and not self.currency:
            raise ValidationError({"currency": ["A price needs a currency (e.g. CNY)."]})

    @property
    def a100_equivalents(self) -> float | None:
        """Capacity in A100-equivalents: measured throughput if verified, else the datasheet
        (BF16, else FP16), else the operator's declaration. Mirrors ``national_summary``."""
        from registry.queries import tflops_of

        from .catalog import A100_BF16_DENSE_TFLOPS

        per = tflops_of(self)
        if per is None:
            return None
        return round(float(self.accelerators) * per / A100_BF16_DENSE_TFLOPS, 2)
