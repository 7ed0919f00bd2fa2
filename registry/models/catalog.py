"""The accelerator catalog and the capability tags pools carry."""

from django.db import models
from django.db.models import Q

from registry.choices import Origin

# Dense BF16 throughput of an NVIDIA A100 (TFLOPS), the unit of "A100-equivalents".
A100_BF16_DENSE_TFLOPS = 312.0


class Accelerator(models.Model):
    """An accelerator model as its vendor's datasheet describes it.

    Figures are dense peak throughput (no sparsity). A figure no public source gives is left
    empty rather than guessed; ``sources`` lists where every figure comes from. Measured
    performance lives on pools (verification), not here.
    """

    slug = models.SlugField(max_length=60, unique=True)
    vendor = models.CharField(max_length=60)
    model = models.CharField(max_length=80)
    origin = models.CharField(max_length=10, choices=Origin.choices)
    memory_gb = models.FloatField(null=True, blank=True)
    memory_bandwidth_gbps = models.FloatField(null=True, blank=True, help_text="GB/s")
    bf16_dense_tflops = models.FloatField(null=True, blank=True)
    fp16_dense_tflops = models.FloatField(null=True, blank=True)
    fp32_tflops = models.FloatField(null=True, blank=True)
    interconnect = models.CharField(max_length=80, blank=True)
    interconnect_bandwidth_gbps = models.FloatField(null=True, blank=True, help_text="GB/s")
    tdp_watts = models.FloatField(null=True, blank=True)
    sources = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["vendor", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["vendor", "model"],
                name="accelerator_unique_vendor_model",
                violation_error_message="This vendor already has a model with this name.",
            ),
            models.CheckConstraint(
                condition=Q(bf16_dense_tflops__isnull=True) | Q(bf16_dense_tflops__gt=0),
                name="accelerator_positive_bf16",
                violation_error_message="Throughput must be positive.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.vendor} {self.model}"

    def peak_tflops(self, precision: str) -> float | None:
        """The datasheet figure that applies to a challenge in ``precision`` (a
        ``registry.choices.Precision`` value): dense BF16, dense FP16, FP32; None when the
        catalog has none (FP64 is not catalogued)."""
        return {
            "bf16": self.bf16_dense_tflops,
            "fp16": self.fp16_dense_tflops,
            "fp32": self.fp32_tflops,
        }.get(precision)

    @property
    def a100_equivalent(self) -> float | None:
        """Datasheet dense BF16 throughput relative to an A100 (None when unknown)."""
        if self.bf16_dense_tflops is None:
            return None
        return round(self.bf16_dense_tflops / A100_BF16_DENSE_TFLOPS, 3)


class Trait(models.Model):
    """A capability tag on a pool (``nvlink``, ``rdma``, ``fp8``, ``liquid-cooling``...),
    used by placement filters."""

    slug = models.SlugField(max_length=40, unique=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug
