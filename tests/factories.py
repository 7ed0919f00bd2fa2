"""factory_boy factories: sensible defaults, state only what a test cares about."""

import factory
from django.contrib.auth import get_user_model

from registry.choices import OrgKind, Role
from registry.models import Accelerator, Center, Cluster, Membership, Organization, Pool


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.Sequence(lambda n: f"Organization {n}")
    kind = OrgKind.OPERATOR


class UserFactory(factory.django.DjangoModelFactory):
    """A user with a membership; pass ``membership__organization`` and ``membership__role``."""

    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")

    @factory.post_generation
    def membership(self, create: bool, extracted: object, **kwargs: object) -> None:
        if not create or kwargs.get("organization") is None:
            return
        Membership.objects.create(
            user=self, organization=kwargs["organization"], role=kwargs.get("role", Role.MEMBER)
        )


class CenterFactory(factory.django.DjangoModelFactory):
    """A center created directly (no change record); use services when the log matters."""

    class Meta:
        model = Center

    operator = factory.SubFactory(OrganizationFactory)
    cluster = factory.LazyFunction(lambda: Cluster.objects.get(code="ZW"))
    national_id = factory.Sequence(lambda n: f"CN-T-T-{n:04d}")
    name = factory.Sequence(lambda n: f"Center {n}")
    latitude = 37.5
    longitude = 105.2
    pue = 1.2
    green_power_share = 0.6
    agent_endpoint = "127.0.0.1:50061"


class PoolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Pool

    center = factory.SubFactory(CenterFactory)
    national_id = factory.LazyAttributeSequence(lambda o, n: f"{o.center.national_id}-P{n:03d}")
    name = factory.Sequence(lambda n: f"Pool {n}")
    accelerator = factory.LazyFunction(lambda: Accelerator.objects.get(slug="nvidia-a100-80g"))
    accelerators_per_node = 8
    nodes = 4
    price_per_accelerator_hour = "10.00"
    currency = "CNY"
    declared_tflops_per_accelerator = 312.0
