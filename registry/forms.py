"""Portal forms of the registry: they check the shape of the input; services check the rules.

A rule the service refuses comes back as a Django ``ValidationError`` and is put on the form with
``apply_service_errors``, so the page shows it next to the field, with the user's input kept.
"""

from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import slug_re

from registry.choices import (
    ALLOWED_TRANSITIONS,
    OPERATOR_TRANSITIONS,
    Origin,
    Precision,
    Role,
    Status,
)
from registry.models import Accelerator, Center, Cluster, Hub, Pool, Trait
from registry.services import CENTER_FIELDS, POOL_FIELDS


def apply_service_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Put a service's ``ValidationError`` on the form: messages for fields the form shows go on
    the field, the others (``status``, ``__all__``...) on the form as a whole."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.error_dict.items():
        messages = [m for e in errors for m in e.messages]
        if name in form.fields:
            form.add_error(name, messages)
        else:
            label = "" if name in ("__all__", "status") else f"{name}: "
            form.add_error(None, [f"{label}{m}" for m in messages])


def choice_field(form: forms.BaseForm, name: str) -> forms.ChoiceField:
    """The form's field ``name``, a choice field whose choices are filled at run time."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    return field


class CenterForm(forms.ModelForm[Center]):
    """Register a center: the fields ``registry.services.center_register`` accepts."""

    cluster = forms.ModelChoiceField(
        queryset=Cluster.objects.select_related("hub"),
        help_text="The national data-center cluster the center belongs to.",
    )

    class Meta:
        model = Center
        fields = list(CENTER_FIELDS)
        widgets = {
            "latitude": forms.NumberInput(attrs={"step": "0.0001"}),
            "longitude": forms.NumberInput(attrs={"step": "0.0001"}),
            "pue": forms.NumberInput(attrs={"step": "0.01"}),
            "green_power_share": forms.NumberInput(attrs={"step": "0.01"}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cluster = self.fields["cluster"]
        assert isinstance(cluster, forms.ModelChoiceField)
        cluster.label_from_instance = lambda obj: f"{obj.hub.code} · {obj.name}"  # type: ignore[method-assign]


# DRF's message for a value outside a ChoiceField's choices, with Django's placeholder.
PRECISION_INVALID = '"%(value)s" is not a valid choice.'


class PoolForm(forms.ModelForm[Pool]):
    """Declare a pool: the fields ``registry.services.pool_create`` accepts, plus traits."""

    accelerator = forms.ModelChoiceField(queryset=Accelerator.objects.all())
    traits = forms.CharField(
        required=False,
        help_text="Comma-separated capability tags, e.g. nvlink, rdma, fp8.",
    )

    class Meta:
        model = Pool
        fields = list(POOL_FIELDS)
        labels = {
            "declared_tflops_per_accelerator": "Declared TFLOPS per accelerator",
            "declared_precision": "Precision of the declared TFLOPS",
        }
        help_texts = {
            "declared_tflops_per_accelerator": "Dense throughput of one accelerator in the "
            "precision below (at most the datasheet figure).",
            "declared_precision": "The arithmetic your TFLOPS figure is about. Verification "
            "challenges every accelerator in it, and refuses as impossible a measurement above "
            "the catalog's peak for it. Most datasheets quote BF16 (tensor cores).",
        }
        # The REST API's words for the same mistake (DRF's ChoiceField), so both doors agree.
        error_messages = {"declared_precision": {"invalid_choice": PRECISION_INVALID}}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["declared_precision"].required = False
        # Omitted means no spot discount (the model's default), as through the API.
        self.fields["spot_discount_percent"].required = False
        # The precision reads as part of the figure: put it right after the TFLOPS.
        names = [n for n in self.fields if n != "declared_precision"]
        names.insert(names.index("declared_tflops_per_accelerator") + 1, "declared_precision")
        self.order_fields(names)

    def clean_declared_precision(self) -> str:
        # Omitted (a script posting the form) means the model's default, as through the API.
        return self.cleaned_data.get("declared_precision") or Precision.BF16

    def clean_spot_discount_percent(self) -> Decimal:
        value = self.cleaned_data.get("spot_discount_percent")
        return Decimal(0) if value is None else Decimal(value)

    def clean_traits(self) -> list[str]:
        raw = self.cleaned_data.get("traits") or ""
        slugs = [s.strip().lower() for s in raw.replace(";", ",").split(",") if s.strip()]
        bad = [s for s in slugs if not slug_re.match(s)]
        if bad:
            raise ValidationError(f"Not a tag (letters, digits, - and _ only): {', '.join(bad)}")
        return sorted(set(slugs))

    def service_data(self) -> dict[str, Any]:
        return {f: self.cleaned_data[f] for f in POOL_FIELDS if f in self.cleaned_data}


class MemberInviteForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'ci pipeline'.")


REQUEST_LABELS = {Status.DRAFT: "Withdraw to draft", Status.RETIRED: "Retire"}


class TransitionForm(forms.Form):
    """An operator's explicit lifecycle request (withdraw to draft, retire).

    Offers only the moves the declared tables allow from the pool's status (the operator's
    table, or every allowed move for platform staff); ``lifecycle_transition`` checks again.
    """

    to = forms.ChoiceField(choices=list(REQUEST_LABELS.items()))
    reason = forms.CharField(max_length=500, required=False)

    def __init__(self, *args: Any, status: str | None = None, staff: bool = False, **kw: Any):
        super().__init__(*args, **kw)
        if status is not None:
            allowed = ALLOWED_TRANSITIONS[status]
            choice_field(self, "to").choices = [
                (to, label)
                for to, label in REQUEST_LABELS.items()
                if to in allowed and (staff or (status, to) in OPERATOR_TRANSITIONS)
            ]


def _choices(pairs: list[tuple[str, str]], blank: str = "any") -> list[tuple[str, str]]:
    return [("", blank), *pairs]


class CapacitySearchForm(forms.Form):
    """Search listed capacity: the filters of ``registry.filtersets.PoolFilterSet`` as a form, plus
    a minimum in A100-equivalents."""

    accelerator = forms.ChoiceField(required=False)
    origin = forms.ChoiceField(required=False, choices=_choices(list(Origin.choices)))
    hub = forms.ChoiceField(required=False)
    cluster = forms.ChoiceField(required=False)
    trait = forms.ChoiceField(required=False, label="Interconnect / trait")
    min_accelerators = forms.IntegerField(required=False, min_value=1)
    min_a100_equivalents = forms.FloatField(required=False, min_value=0, label="Min A100-eq.")
    max_price = forms.DecimalField(
        required=False, min_value=0, decimal_places=4, label="Max price / acc·h"
    )
    status = forms.ChoiceField(
        required=False,
        choices=[("active", "verified (active)"), ("listed", "all listed"), ("", "any I can see")],
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice_field(self, "accelerator").choices = _choices(
            [(a.slug, str(a)) for a in Accelerator.objects.all()]
        )
        choice_field(self, "hub").choices = _choices([(h.code, h.name) for h in Hub.objects.all()])
        choice_field(self, "cluster").choices = _choices(
            [(c.code, c.name) for c in Cluster.objects.all()]
        )
        choice_field(self, "trait").choices = _choices(
            [(t.slug, t.slug) for t in Trait.objects.all()]
        )
