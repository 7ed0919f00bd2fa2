"""Mutual TLS between the platform and site agents, on real TLS sockets on loopback (issue 12).

A fresh authority per test (``registry.certificates``); agents get their certificates the way
``python -m agent certificate`` does (a key made on the agent's side, a CSR signed by the
platform). Every defence is attacked: an agent holding another center's certificate, an
impostor platform (another authority; a center's certificate of the right authority), expired
and revoked certificates, heartbeats from one center's certificate for another center's pools,
and a rotation under heartbeat load that must lose no heartbeat.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.certificate import make_request, store
from agent.config import AgentConfig, CenterConfig, HeartbeatConfig, PoolConfig
from agent.heartbeat import HeartbeatSender
from agent.server import AgentRuntime, build_server
from agent.workloads import WorkloadRunner
from brokers.client import cli
from brokers.client.client import BrokerClient
from brokers.rpc.server import build_server as build_broker
from protos import agent_pb2, agent_pb2_grpc, broker_pb2
from registry import certificates
from registry import services as registry_services
from registry.choices import Status
from registry.models import Accelerator, Center, Pool
from rpckit.tls import (
    PLATFORM_DNS_NAME,
    CertFiles,
    center_dns_name,
    channel_credentials,
    name_options,
)
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory
from tests.verification.conftest import A100_TFLOPS, agent_config, verifier_settings  # noqa: F401
from verification import services
from verification.choices import RunState, Trigger
from verification.models import Heartbeat
from verification.rpc.telemetry import build_telemetry_server

__all__ = ["verifier_settings"]


# --- the authority and the certificates -------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path, settings: Any) -> Path:
    """A new authority and platform certificate in ``tmp_path/platform`` (the platform speaks
    mutual TLS from now on)."""
    directory = tmp_path / "platform"
    settings.PLATFORM_TLS_DIR = str(directory)
    settings.PLATFORM_CA_KEY_FILE = ""
    settings.PLATFORM_CA_CERT_FILE = ""
    certificates.ensure_development_tls(directory)
    assert certificates.mutual_tls()
    return directory


def issue(center: Center, directory: Path, **kwargs: Any) -> Any:
    """What ``python -m agent certificate`` does, without HTTP: key here, CSR signed there."""
    key_pem, csr_pem = make_request(center.national_id)
    row, bundle = certificates.center_certificate_issue(
        center=center, actor=None, csr_pem=csr_pem.decode(), door="api", **kwargs
    )
    store(directory, key_pem=key_pem, cert_pem=row.certificate_pem.encode(), ca_pem=bundle)
    return row


def impostor_files(tmp_path: Path, settings: Any, real_ca: Path) -> CertFiles:
    """A 'platform' certificate of another authority (it trusts the real bundle, which is
    public, so it can verify the agent: only its own certificate is wrong)."""
    real = settings.PLATFORM_TLS_DIR
    other = tmp_path / "impostor"
    settings.PLATFORM_TLS_DIR = str(other)
    certificates.ensure_development_tls(other)
    settings.PLATFORM_TLS_DIR = real
    return CertFiles(cert=other / "platform.pem", key=other / "platform.key", ca=real_ca)


def one_pool_config(directory: Path | None, **kwargs: Any) -> AgentConfig:
    config = agent_config(nodes=1, **kwargs)
    return AgentConfig(
        **{
            **{f: getattr(config, f) for f in config.__dataclass_fields__},
            "tls_dir": str(directory) if directory else "",
        }
    )


@pytest.fixture
def start_agent() -> Iterator[Callable[[AgentConfig], AgentRuntime]]:
    runtimes: list[AgentRuntime] = []

    def start(config: AgentConfig) -> AgentRuntime:
        runtime = build_server("127.0.0.1:0", agent_config=config)
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop(grace=0).wait()


def a100_pool(operator: Any, endpoint: str = "") -> Pool:
    center = CenterFactory(operator=operator, agent_endpoint=endpoint)
    return PoolFactory(
        center=center,
        accelerator=Accelerator.objects.get(slug="nvidia-a100-80g"),
        accelerators_per_node=8,
        nodes=1,
        declared_tflops_per_accelerator=A100_TFLOPS,
    )


def verify(pool: Pool) -> Any:
    run, _ = services.verification_request(
        pool=force_status(pool, Status.SUBMITTED),
        trigger=Trigger.SUBMITTED,
        actor=None,
        door="worker",
    )
    services.verification_run(run_id=str(run.run_id), final_attempt=True)
    run.refresh_from_db()
    return run


# --- the verifier dials the center's agent, and only it --------------------------------------


@pytest.mark.django_db
def test_the_verifier_accepts_only_the_agent_of_that_center(
    pki: Path, tmp_path: Path, acme: Any, start_agent: Any
) -> None:
    other = a100_pool(acme)
    # The agent at A's endpoint holds B's certificate (the same authority's, current).
    issue(other.center, tmp_path / "b")
    runtime = start_agent(one_pool_config(tmp_path / "b"))
    pool = a100_pool(acme, f"127.0.0.1:{runtime.port}")

    run = verify(pool)

    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith("agent identity"), run.verdict_reason
    assert other.center.national_id in run.verdict_reason
    assert pool.center.national_id in run.verdict_reason
    pool.refresh_from_db()
    assert pool.status == Status.FAILED

    # Positive control: the same agent with A's certificate is challenged over mutual TLS and
    # answers every device (the verdict itself is the challenge's: on a loaded machine a
    # simulated device may fall behind its declared speed, which is not this test's subject).
    issue(pool.center, tmp_path / "b")  # renewal in place: the running server reloads it
    run = verify(pool)
    assert run.state == RunState.PASSED or run.verdict_reason.startswith("throughput"), (
        run.verdict_reason
    )
    assert len(run.devices) == 8  # every device of the node was challenged through the channel
    assert runtime.rpc is not None and runtime.rpc.credentials is not None
    assert runtime.rpc.credentials.reloads == 1


@pytest.mark.django_db
def test_expired_and_revoked_agent_certificates_are_refused_by_the_verifier(
    pki: Path, tmp_path: Path, acme: Any, start_agent: Any
) -> None:
    pool = a100_pool(acme)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    issue(pool.center, tmp_path / "a", not_before=long_ago, days=1)
    runtime = start_agent(one_pool_config(tmp_path / "a"))
    Center.objects.filter(pk=pool.center.pk).update(agent_endpoint=f"127.0.0.1:{runtime.port}")
    pool.refresh_from_db()

    run = verify(pool)
    assert run.state == RunState.FAILED
    assert "agent identity" in run.verdict_reason
    assert "expired" in run.verdict_reason, run.verdict_reason

    row = issue(pool.center, tmp_path / "a")
    certificates.certificate_revoke(certificate=row, actor=None, reason="key stolen", door="api")
    run = verify(pool)
    assert run.state == RunState.FAILED
    assert "revoked" in run.verdict_reason and "key stolen" in run.verdict_reason


# --- the agent serves the platform, and only it ----------------------------------------------


@pytest.mark.django_db
def test_the_agent_refuses_an_impostor_platform(
    pki: Path, tmp_path: Path, acme: Any, rival: Any, settings: Any, start_agent: Any
) -> None:
    pool, foreign = a100_pool(acme), a100_pool(rival)
    issue(pool.center, tmp_path / "a")
    issue(foreign.center, tmp_path / "b")
    runtime = start_agent(one_pool_config(tmp_path / "a"))
    address = f"127.0.0.1:{runtime.port}"
    request = agent_pb2.StartWorkloadRequest(
        workload_id="impostor-1", pool_key="nvidia-a100-80g", accelerators=1, duration_seconds=60
    )

    def start_as(files: CertFiles | None) -> grpc.StatusCode:
        if files is None:
            channel = grpc.insecure_channel(address)
        else:
            channel = grpc.secure_channel(
                address,
                channel_credentials(files),
                options=name_options(center_dns_name(pool.center.national_id)),
            )
        with channel:
            try:
                agent_pb2_grpc.AgentStub(channel).StartWorkload(request, timeout=5)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    # Plaintext, another authority's "platform", and a center's certificate of the right
    # authority (another center's agent trying to send workloads): all refused.
    assert start_as(None) == grpc.StatusCode.UNAVAILABLE
    assert start_as(impostor_files(tmp_path, settings, pki / "ca.pem")) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert start_as(CertFiles.in_dir(tmp_path / "b", "agent")) == grpc.StatusCode.PERMISSION_DENIED
    assert runtime.workloads.busy("nvidia-a100-80g") == 0
    # Positive control: the platform's certificate.
    assert start_as(certificates.platform_files()) == grpc.StatusCode.OK


# --- telemetry: the certificate's center, and only its pools ---------------------------------


@pytest.fixture
def telemetry(pki: Path) -> Iterator[Any]:
    runtime = build_telemetry_server("127.0.0.1:0", max_workers=8)
    yield runtime
    runtime.stop(grace=0).wait()


def beat(pool: Pool, center: str = "") -> agent_pb2.SendHeartbeatRequest:
    return agent_pb2.SendHeartbeatRequest(
        agent_id="mtls-test",
        center_national_id=center,
        pools=[
            agent_pb2.PoolHeartbeat(
                pool_national_id=pool.national_id,
                utilization=0.0,
                accelerators_healthy=1,
                accelerators_busy=0,
            )
        ],
    )


def send(port: int, files: CertFiles | None, request: Any, token: str | None) -> grpc.StatusCode:
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.insecure_channel(address)
        if files is None
        else grpc.secure_channel(
            address, channel_credentials(files), options=name_options(PLATFORM_DNS_NAME)
        )
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with channel:
        try:
            agent_pb2_grpc.TelemetryStub(channel).SendHeartbeat(
                request, metadata=metadata, timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.django_db(transaction=True)
def test_telemetry_accepts_heartbeats_only_for_the_certificates_center(
    telemetry: Any, tmp_path: Path, acme: Any, rival: Any, alice: Any
) -> None:
    mine, sibling, foreign = a100_pool(acme), a100_pool(acme), a100_pool(rival)
    for pool in (mine, sibling, foreign):
        force_status(pool, Status.ACTIVE)
    issue(mine.center, tmp_path / "a")
    files = CertFiles.in_dir(tmp_path / "a", "agent")
    token = registry_services.token_create(user=alice, name="mtls")[1]
    port = telemetry.port

    assert send(port, files, beat(mine, mine.center.national_id), token) == grpc.StatusCode.OK
    # Center A's certificate for another center's pool: the same operator's, or another's.
    assert send(port, files, beat(sibling), token) == grpc.StatusCode.PERMISSION_DENIED
    assert send(port, files, beat(foreign), token) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        send(port, files, beat(mine, sibling.center.national_id), token)
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # The token stays the second factor; no certificate (plaintext) is no connection.
    assert send(port, files, beat(mine), None) == grpc.StatusCode.UNAUTHENTICATED
    assert send(port, None, beat(mine), token) == grpc.StatusCode.UNAVAILABLE
    assert Heartbeat.objects.filter(pool__in=[sibling, foreign]).count() == 0
    assert Heartbeat.objects.filter(pool=mine).count() == 1


@pytest.mark.django_db(transaction=True)
def test_telemetry_refuses_expired_and_revoked_certificates(
    telemetry: Any, tmp_path: Path, acme: Any, alice: Any, caplog: Any
) -> None:
    pool = force_status(a100_pool(acme), Status.ACTIVE)
    token = registry_services.token_create(user=alice, name="mtls")[1]
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    issue(pool.center, tmp_path / "old", not_before=long_ago, days=1)
    # Expired: the handshake itself refuses it (no call reaches the service).
    assert (
        send(telemetry.port, CertFiles.in_dir(tmp_path / "old", "agent"), beat(pool), token)
        == grpc.StatusCode.UNAVAILABLE
    )
    row = issue(pool.center, tmp_path / "new")
    files = CertFiles.in_dir(tmp_path / "new", "agent")
    assert send(telemetry.port, files, beat(pool), token) == grpc.StatusCode.OK
    certificates.certificate_revoke(
        certificate=row, actor=None, reason="decommissioned", door="api"
    )
    assert send(telemetry.port, files, beat(pool), token) == grpc.StatusCode.UNAUTHENTICATED
    assert any("revoked" in r.getMessage() for r in caplog.records)
    assert Heartbeat.objects.filter(pool=pool).count() == 1


# --- rotation without downtime ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_rotation_under_heartbeat_load_loses_no_heartbeat(
    telemetry: Any, pki: Path, tmp_path: Path, acme: Any, alice: Any
) -> None:
    token = registry_services.token_create(user=alice, name="mtls")[1]
    senders: list[HeartbeatSender] = []
    pools = [force_status(a100_pool(acme), Status.ACTIVE) for _ in range(3)]
    for i, pool in enumerate(pools):
        directory = tmp_path / f"agent{i}"
        issue(pool.center, directory)
        config = AgentConfig(
            agent_id=f"rotating-{i}",
            pools=(
                PoolConfig(
                    key="a100", accelerator_model="nvidia-a100-80g", national_id=pool.national_id
                ),
            ),
            center=CenterConfig(national_id=pool.center.national_id),
            heartbeat=HeartbeatConfig(
                platform=f"127.0.0.1:{telemetry.port}", token=token, interval_seconds=0.1
            ),
            tls_dir=str(directory),
        )
        senders.append(HeartbeatSender(config, WorkloadRunner(config.pools)))
    for sender in senders:
        sender.start()
    try:
        deadline = time.monotonic() + 20
        while min(s.sent for s in senders) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = [s.sent for s in senders]
        # Rotate everything at once: the platform's certificate (the telemetry server reloads
        # it at the next connection) and every agent's (each reconnects between two beats).
        certificates.issue_platform_certificate(pki)
        for i, pool in enumerate(pools):
            issue(pool.center, tmp_path / f"agent{i}")
        deadline = time.monotonic() + 20
        while (
            any(s.sent < b + 10 for s, b in zip(senders, before, strict=True))
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    finally:
        for sender in senders:
            sender.stop()
    assert [s.failed for s in senders] == [0, 0, 0]
    assert all(s.sent >= b + 10 for s, b in zip(senders, before, strict=True))
    assert all(s.connections == 2 for s in senders)  # one reconnection each, with the new files
    assert telemetry.credentials.reloads == 1
    assert Heartbeat.objects.count() == sum(s.sent for s in senders)


# --- TLS for programs: the broker -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_broker_serves_tls_to_a_client_that_trusts_the_ca(pki: Path, dave: Any) -> None:
    token = registry_services.token_create(user=dave, name="tls")[1]
    files = CertFiles(cert=pki / "platform.pem", key=pki / "platform.key")
    runtime = build_broker("127.0.0.1:0", max_workers=4, tls_files=files)
    try:
        with BrokerClient(f"localhost:{runtime.port}", token, ca=pki / "ca.pem") as client:
            assert (
                client.stub.QueryCapacity(
                    broker_pb2.QueryCapacityRequest(page_size=1),
                    metadata=client.metadata,
                    timeout=10,
                )
                is not None
            )
        # A client that does not speak TLS, or does not trust the authority, gets nowhere.
        with BrokerClient(f"localhost:{runtime.port}", token, timeout=3) as plain:
            with pytest.raises(grpc.RpcError) as refused:
                plain.stub.QueryCapacity(
                    broker_pb2.QueryCapacityRequest(page_size=1), metadata=plain.metadata, timeout=3
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # The command line: --ca, and a bundle it cannot read (a usage error, nothing dialled).
        broker = ["--broker", f"localhost:{runtime.port}", "--token", token]
        assert cli.main([*broker, "--ca", str(pki / "ca.pem"), "capacity"]) == 0
        assert cli.main([*broker, "--ca", str(pki / "missing.pem"), "capacity"]) == 2
    finally:
        runtime.stop(grace=0).wait()


# --- the REST door of the authority -----------------------------------------------------------


@pytest.mark.django_db
def test_certificates_are_issued_from_a_csr_for_the_operators_own_center_only(
    pki: Path, acme: Any, rival: Any, alice: Any, carol: Any, api_as: Any
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from rpckit.tls import center_of, load_certificate, uri_names

    mine, theirs = a100_pool(acme).center, a100_pool(rival).center
    # The CSR asks for the rival's identity: the platform names the caller's center anyway.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, theirs.national_id)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(
                        f"spiffe://interconnect.cn/center/{theirs.national_id}"
                    )
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    url = f"/api/v1/centers/{mine.national_id}/certificate/"
    answer = api_as(alice).post(url, {"csr": csr}, format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert center_of(body["certificate"]) == mine.national_id
    assert uri_names(load_certificate(body["certificate"].encode())) == [
        f"spiffe://interconnect.cn/center/{mine.national_id}"
    ]
    assert body["ca"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in answer.content.decode()
    # Another operator: not found, like a missing center; bad input: the field's message.
    foreign = api_as(carol).post(url, {"csr": csr}, format="json")
    missing = api_as(carol).post(
        "/api/v1/centers/ZZ-NONE/certificate/", {"csr": csr}, format="json"
    )
    assert foreign.status_code == missing.status_code == 404
    bad = api_as(alice).post(url, {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nxx"}, format="json")
    assert bad.status_code == 400 and "csr" in bad.json()
    # Revocation by serial, through the same door.
    revoke = f"/api/v1/centers/{mine.national_id}/revoke-certificate/"
    assert api_as(carol).post(revoke, {"serial": body["serial"]}, format="json").status_code == 404
    done = api_as(alice).post(
        revoke, {"serial": body["serial"], "reason": "rotated"}, format="json"
    )
    assert done.status_code == 200 and done.json()["revoked_at"]
    assert "revoked" in (certificates.refusal(body["certificate"]) or "")


@pytest.mark.django_db
def test_a_platform_without_an_authority_refuses_from_the_catalog(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    acme: Any,
    alice: Any,
    api_as: Any,
) -> None:
    """No certificate authority configured: 503 with the catalog's reason and message, nothing
    issued (before, a hand-built body without the reason code)."""
    from registry.models import AgentCertificate

    settings.PLATFORM_TLS_DIR = str(tmp_path / "nothing-here")
    settings.PLATFORM_CA_KEY_FILE = ""
    monkeypatch.delenv("PLATFORM_CA_KEY", raising=False)
    center = a100_pool(acme).center
    _, csr = make_request(center.national_id)
    answer = api_as(alice).post(
        f"/api/v1/centers/{center.national_id}/certificate/", {"csr": csr}, format="json"
    )
    assert answer.status_code == 503, answer.content
    body = answer.json()
    assert body["code"] == "certificates.no_authority"
    assert body["detail"] == "This platform issues no certificates (no authority configured)."
    assert "retryable" not in body
    assert not AgentCertificate.objects.filter(center=center).exists()


@pytest.mark.django_db
def test_the_command_line_without_an_authority_says_so_and_fails(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch, acme: Any
) -> None:
    """The same refusal at the command line: its message (and what is missing) and a non-zero
    exit, not a traceback; nothing issued, nothing written."""
    from django.core.management import CommandError, call_command

    from registry.models import AgentCertificate

    settings.PLATFORM_TLS_DIR = str(tmp_path / "nothing-here")
    settings.PLATFORM_CA_KEY_FILE = ""
    monkeypatch.delenv("PLATFORM_CA_KEY", raising=False)
    center = a100_pool(acme).center
    out = tmp_path / "agent"
    with pytest.raises(CommandError) as refused:
        call_command("agent_certificate", "--center", center.national_id, "--out", str(out))
    assert "This platform issues no certificates (no authority configured)." in str(refused.value)
    assert "PLATFORM_CA_KEY_FILE" in str(refused.value)
    assert not AgentCertificate.objects.filter(center=center).exists()
    assert not out.exists()


@pytest.mark.django_db
def test_the_demo_launcher_reissues_a_certificate_this_registry_never_issued(
    pki: Path, acme: Any
) -> None:
    """``make run`` keeps the demo agents' certificates in the TLS folder while the database
    may be new (another INTERCONNECT_VAR_DIR, a re-seeded demo): a certificate the registry
    does not know is replaced, not presented to a verifier that refuses it."""
    from registry.models import AgentCertificate
    from verification.management.commands.run_demo_agents import Command

    center = a100_pool(acme).center
    launcher = Command()
    directory = Path(launcher._certificate(center))
    first = (directory / "agent.pem").read_bytes()
    assert certificates.refusal(first, center_national_id=center.national_id) is None
    assert Path(launcher._certificate(center)).joinpath("agent.pem").read_bytes() == first

    AgentCertificate.objects.filter(center=center).delete()  # a new database, the same folder
    assert "not issued by this platform's registry" in (certificates.refusal(first) or "")
    again = (Path(launcher._certificate(center)) / "agent.pem").read_bytes()
    assert again != first
    assert certificates.refusal(again, center_national_id=center.national_id) is None

    # The command line's --if-missing follows the same rule (``agent_certificate.current``).
    from django.core.management import call_command

    AgentCertificate.objects.filter(center=center).delete()
    call_command(
        "agent_certificate", "--center", center.national_id, "--out", str(directory), "--if-missing"
    )
    third = (directory / "agent.pem").read_bytes()
    assert third != again
    assert certificates.refusal(third, center_national_id=center.national_id) is None
