"""The API's public surface: schema, docs, summary, tokens, settings that matter."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from registry.choices import Status
from registry.models import ApiToken

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_3(tmp_path: Path, api_as: Any) -> None:
    out = tmp_path / "schema.yaml"
    # --validate checks the document against the OpenAPI 3 JSON schema; warnings fail.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert text.startswith("openapi: 3.")
    for path in (
        "/api/v1/pools/{national_id}/",
        "/api/v1/summary/",
        "/api/v1/centers/{national_id}/submit/",
    ):
        assert path in text
    response = api_as(None).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200


@pytest.mark.django_db
def test_interactive_docs_are_served_without_any_cdn(api_as: Any) -> None:
    html = api_as(None).get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html and "unpkg" not in html


@pytest.mark.django_db
def test_summary_counts_capacity_by_hub_model_and_origin(
    acme: Any, rival: Any, make_pool: Any, api_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE, nodes=2)  # 16 A100s, verified
    make_pool(rival, Status.SUBMITTED, nodes=1)  # 8 A100s, not yet verified
    make_pool(rival, Status.DRAFT, nodes=10)  # drafts are not declared capacity
    data = api_as(None).get("/api/v1/summary/").data
    assert data["totals"]["accelerators"] == 24
    assert data["totals"]["verified_accelerators"] == 16
    assert data["totals"]["verified_share"] == pytest.approx(16 / 24, abs=1e-3)
    (nx,) = [row for row in data["by_hub"] if row["hub"] == "NX"]
    assert nx["accelerators"] == 24
    (a100,) = data["by_accelerator"]
    assert a100["accelerator"] == "nvidia-a100-80g" and a100["a100_equivalents"] == 24.0
    assert [row["origin"] for row in data["by_origin"]] == ["imported"]


@pytest.mark.django_db
def test_tokens_are_stored_hashed_shown_once_and_revocable(
    alice: Any, carol: Any, api_as: Any
) -> None:
    client = api_as(alice)
    created = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert created.status_code == 201
    token = created.data["token"]
    row = ApiToken.objects.get(key_id=created.data["key_id"])
    assert token not in (row.digest, row.key_id) and len(row.digest) == 64
    assert "token" not in client.get("/api/v1/tokens/").data["results"][0]
    fresh = api_as(None)
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert fresh.get("/api/v1/organizations/").status_code == 200
    # Another tenant cannot see or revoke it.
    assert api_as(carol).delete(f"/api/v1/tokens/{row.key_id}/").status_code == 404
    assert client.delete(f"/api/v1/tokens/{row.key_id}/").status_code == 204
    assert fresh.get("/api/v1/organizations/").status_code == 401
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:-1]}x")
    assert fresh.get("/api/v1/organizations/").status_code == 401


def _settings_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "interconnect.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_embedded_default_is_sqlite_with_immediate_transactions(tmp_path: Path) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "d = s.DATABASES['default']; print(d['ENGINE'], d['OPTIONS']['transaction_mode'], "
        "d['OPTIONS']['timeout'], s.CELERY_BROKER_URL)"
    )
    result = _settings_in_subprocess({"INTERCONNECT_VAR_DIR": str(tmp_path)}, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "IMMEDIATE",
        "20",
        "filesystem://",
    ]


def test_celery_settings_that_matter_are_applied() -> None:
    from interconnect.celery import app

    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_always_eager is False
    assert conf.task_soft_time_limit < conf.task_time_limit
    if conf.broker_url.startswith("redis"):
        # A task must be redelivered only after it surely died: beyond its hard time limit.
        assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def _deploy_check(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            # A test-only escape hatch (the browser tests) must not leak into the deploy check.
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("DJANGO_ALLOW_ASYNC_UNSAFE", "PLATFORM_TLS_DIR")
            },
            "DJANGO_PRODUCTION": "1",
            "DJANGO_SECRET_KEY": "x" * 30 + "-production-secret-for-the-deploy-check-" + "y" * 20,
            "DJANGO_ALLOWED_HOSTS": "compute.example.org",
            "INTERCONNECT_VAR_DIR": str(tmp_path),
            **extra,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    made = subprocess.run(
        [sys.executable, "manage.py", "tls_dev_ca", "--dir", str(tls)],
        cwd=ROOT,
        env={**os.environ, "INTERCONNECT_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    result = _deploy_check(tmp_path, PLATFORM_TLS_DIR=str(tls))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_without_mutual_tls_fails_the_deploy_check(tmp_path: Path) -> None:
    """Without mutual TLS a center could name another center's agent as its own and be
    verified on that hardware (found by review): production refuses to pass the checklist."""
    result = _deploy_check(tmp_path)
    assert result.returncode != 0
    assert "interconnect.E001" in result.stdout + result.stderr
    assert "PLATFORM_TLS_DIR" in result.stdout + result.stderr


def test_production_refuses_the_development_secret(tmp_path: Path) -> None:
    result = _settings_in_subprocess(
        {"DJANGO_PRODUCTION": "1", "INTERCONNECT_VAR_DIR": str(tmp_path)},
        "import django; django.setup()",
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr
