"""Portal writes: who may submit, retire, invite and revoke, and that each goes through the
services with ``door=portal`` (a change record) or changes nothing at all."""

from typing import Any

import pytest

from registry.choices import Status
from registry.models import ApiToken, ChangeRecord, Membership, Pool
from registry.services import token_create

PERSONAS = ["anon", "alice", "bob", "carol", "dave", "pat"]
# Submitting acme's draft pool: the owner's members and staff succeed (redirect back to the pool);
# anonymous is sent to sign in; others get a 404 (the pool does not exist for them).
SUBMIT_OWN_DRAFT = {"anon": 302, "alice": 302, "bob": 302, "carol": 404, "dave": 404, "pat": 302}
RETIRE_FOREIGN_ACTIVE = {
    "anon": 302,
    "alice": 404,
    "bob": 404,
    "carol": 302,
    "dave": 404,
    "pat": 302,
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("owner", "status", "action", "data", "expected", "after"),
    [
        ("acme", Status.DRAFT, "submit", {}, SUBMIT_OWN_DRAFT, Status.SUBMITTED),
        (
            "rival",
            Status.ACTIVE,
            "transition",
            {"to": "retired", "reason": "decommissioned"},
            RETIRE_FOREIGN_ACTIVE,
            Status.RETIRED,
        ),
    ],
    ids=["submit-own-draft", "retire-foreign-active"],
)
def test_pool_actions(
    owner: str,
    status: str,
    action: str,
    data: dict[str, str],
    expected: dict[str, int],
    after: str,
    personas: dict[str, Any],
    acme: Any,
    rival: Any,
    make_pool: Any,
    client_as: Any,
) -> None:
    for persona in PERSONAS:
        pool = make_pool(acme if owner == "acme" else rival, status)
        changes = ChangeRecord.objects.count()
        response = client_as(personas[persona]).post(f"/pools/{pool.national_id}/{action}/", data)
        assert response.status_code == expected[persona], (persona, response.status_code)
        pool.refresh_from_db()
        if expected[persona] == 302 and persona != "anon":
            assert response["Location"] == f"/pools/{pool.national_id}/"
            assert pool.status == after
            record = ChangeRecord.objects.filter(object_key=pool.national_id).first()
            assert record.door == "portal" and record.actor == personas[persona]
        else:
            assert pool.status == status and ChangeRecord.objects.count() == changes


@pytest.mark.django_db
def test_a_refused_transition_is_explained_and_changes_nothing(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    # Withdrawing an active pool to draft is not an operator's move.
    response = client_as(alice).post(
        f"/pools/{pool.national_id}/transition/", {"to": "draft"}, follow=True
    )
    assert b"cannot become draft" in response.content
    assert Pool.objects.get(pk=pool.pk).status == Status.ACTIVE


@pytest.mark.django_db
def test_actions_refuse_get(alice: Any, acme: Any, make_pool: Any, client_as: Any) -> None:
    pool = make_pool(acme, Status.DRAFT)
    assert client_as(alice).get(f"/pools/{pool.national_id}/submit/").status_code == 405
    assert Pool.objects.get(pk=pool.pk).status == Status.DRAFT


@pytest.mark.django_db
def test_an_admin_invites_a_member_who_can_sign_in_with_the_one_time_password(
    alice: Any, acme: Any, client_as: Any
) -> None:
    response = client_as(alice).post(
        "/organization/", {"username": "erin", "email": "erin@acme.example", "role": "member"}
    )
    assert response.status_code == 200
    password = response.context["invited"]["password"]
    assert password.encode() in response.content
    membership = Membership.objects.get(user__username="erin")
    assert membership.organization == acme and membership.role == "member"
    # The password is stored hashed and works once handed over.
    assert password not in membership.user.password
    login = client_as(None).post("/login/", {"username": "erin", "password": password})
    assert login.status_code == 302
    # The change log of acme shows who invited whom, through the portal.
    record = ChangeRecord.objects.get(object_type="registry.membership")
    assert record.owner == acme and record.door == "portal" and record.actor == alice
    # The members page lists the new member; the password is not shown again.
    again = client_as(alice).get("/organization/")
    assert b"erin" in again.content and password.encode() not in again.content


@pytest.mark.django_db
@pytest.mark.parametrize(("persona", "expected"), [("bob", 403), ("dave", 200), ("pat", 200)])
def test_only_admins_invite(
    persona: str, expected: int, personas: dict[str, Any], client_as: Any
) -> None:
    response = client_as(personas[persona]).post(
        "/organization/", {"username": f"new-{persona}", "role": "admin"}
    )
    assert response.status_code == expected
    assert Membership.objects.filter(user__username=f"new-{persona}").exists() == (expected == 200)


@pytest.mark.django_db
def test_an_invite_with_a_taken_username_keeps_the_input_and_says_why(
    alice: Any, bob: Any, client_as: Any
) -> None:
    response = client_as(alice).post(
        "/organization/", {"username": "bob", "email": "x@acme.example", "role": "admin"}
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "already exists" in " ".join(form.errors["username"])
    assert b'value="x@acme.example"' in response.content


@pytest.mark.django_db
def test_tokens_are_shown_once_and_revoked_only_by_their_owner(
    alice: Any, carol: Any, client_as: Any
) -> None:
    client = client_as(alice)
    response = client.post("/tokens/", {"name": "ci pipeline"})
    token = response.context["created"]
    assert token.startswith("ci_") and token.encode() in response.content
    listing = client.get("/tokens/")
    assert b"ci pipeline" in listing.content and token.encode() not in listing.content
    row = ApiToken.objects.get(user=alice, name="ci pipeline")
    # Carol cannot revoke Alice's token: it does not exist for her.
    assert client_as(carol).post(f"/tokens/{row.key_id}/revoke/").status_code == 404
    assert ApiToken.objects.get(pk=row.pk).revoked_at is None
    assert client.post(f"/tokens/{row.key_id}/revoke/").status_code == 302
    assert ApiToken.objects.get(pk=row.pk).revoked_at is not None


@pytest.mark.django_db
def test_a_revoked_token_no_longer_opens_the_api(alice: Any, client_as: Any) -> None:
    row, token = token_create(user=alice, name="to revoke")
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/tokens/").status_code == 200
    client_as(alice).post(f"/tokens/{row.key_id}/revoke/")
    assert api.get("/api/v1/tokens/").status_code == 401


REVERIFY_OWN_ACTIVE = {"anon": 302, "alice": 302, "bob": 302, "carol": 404, "dave": 404, "pat": 302}


@pytest.mark.django_db
def test_reverification_requests(
    personas: dict[str, Any], acme: Any, make_pool: Any, client_as: Any
) -> None:
    from verification.models import VerificationRun

    for persona in PERSONAS:
        pool = make_pool(acme, Status.ACTIVE)
        response = client_as(personas[persona]).post(f"/pools/{pool.national_id}/reverify/")
        assert response.status_code == REVERIFY_OWN_ACTIVE[persona], persona
        runs = VerificationRun.objects.filter(pool=pool)
        if persona == "anon" or REVERIFY_OWN_ACTIVE[persona] == 404:
            assert not runs.exists()
        else:
            run = runs.get()
            assert run.trigger == "operator_request" and run.requested_by == personas[persona]
            # Asking again while the run is open does not queue a second one.
            client_as(personas[persona]).post(f"/pools/{pool.national_id}/reverify/")
            assert runs.count() == 1


@pytest.mark.django_db
def test_a_draft_pool_cannot_be_reverified_and_the_page_says_why(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.DRAFT)
    page = client_as(alice).post(f"/pools/{pool.national_id}/reverify/", follow=True)
    assert b"cannot be verified; submit it first" in page.content


@pytest.mark.django_db
def test_declaring_downtime(
    alice: Any, carol: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    from verification.models import ScheduledDowntime

    pool = make_pool(acme, Status.ACTIVE)
    url = f"/pools/{pool.national_id}/downtime/"
    window = {"start": "2030-01-01T02:00", "end": "2030-01-01T06:00", "reason": "firmware"}
    assert client_as(carol).post(url, window).status_code == 404
    assert not ScheduledDowntime.objects.exists()
    # End before start: the service refuses; the page keeps the input and shows why.
    bad = client_as(alice).post(url, {**window, "end": "2030-01-01T01:00"})
    assert bad.status_code == 200
    assert b"must end after it starts" in bad.content
    assert b'value="firmware"' in bad.content and b'value="2030-01-01T02:00"' in bad.content
    assert not ScheduledDowntime.objects.exists()
    ok = client_as(alice).post(url, window)
    assert ok.status_code == 302
    downtime = ScheduledDowntime.objects.get()
    assert downtime.pool == pool and downtime.reason == "firmware"
    record = ChangeRecord.objects.filter(object_type="verification.scheduleddowntime").get()
    assert record.door == "portal" and record.owner == acme
    assert b"firmware" in client_as(alice).get(f"/pools/{pool.national_id}/").content


@pytest.mark.django_db
def test_declaring_downtime_of_a_whole_center(
    alice: Any, carol: Any, dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    from verification.models import ScheduledDowntime

    center = make_pool(acme, Status.ACTIVE).center
    url = f"/centers/{center.national_id}/downtime/"
    window = {"start": "2030-02-01T00:00", "end": "2030-02-01T04:00", "reason": "power works"}
    for outsider in (carol, dave):
        assert client_as(outsider).post(url, window).status_code == 404
    bad = client_as(alice).post(url, {**window, "start": "not a date"})
    assert bad.status_code == 200 and b'value="power works"' in bad.content
    assert b'id="id_start_error"' in bad.content
    assert not ScheduledDowntime.objects.exists()
    assert client_as(alice).post(url, window).status_code == 302
    downtime = ScheduledDowntime.objects.get()
    assert downtime.center == center and downtime.pool is None
    page = client_as(alice).get(f"/centers/{center.national_id}/").content
    assert b"power works" in page
    # Others see the center's public page, without its downtime or the form.
    public = client_as(carol).get(f"/centers/{center.national_id}/").content
    assert b"power works" not in public and b"center-downtime-form" not in public


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "offered"),
    [
        (Status.DRAFT, ["retired"]),
        (Status.FAILED, ["draft", "retired"]),
        (Status.ACTIVE, ["retired"]),
        (Status.RETIRED, []),
    ],
)
def test_the_pool_page_offers_only_the_moves_the_tables_allow(
    status: str, offered: list[str], alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, status)
    page = client_as(alice).get(f"/pools/{pool.national_id}/")
    form = page.context["transition_form"]
    assert [value for value, _ in form.fields["to"].choices] == offered
    assert (b'id="transition-form"' in page.content) == bool(offered)


@pytest.mark.django_db
def test_a_pool_under_verification_watches_its_status(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.SUBMITTED)
    client = client_as(alice)
    page = client.get(f"/pools/{pool.national_id}/").content.decode()
    assert f"/pools/{pool.national_id}/status/" in page
    assert client.get(f"/pools/{pool.national_id}/status/").json()["status"] == "submitted"
    active = make_pool(acme, Status.ACTIVE)
    assert "/status/" not in client.get(f"/pools/{active.national_id}/").content.decode()
