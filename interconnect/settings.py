"""Settings, read from the environment with django-environ.

Embedded default (no server needed): SQLite in ``var/`` with IMMEDIATE transactions and a busy
timeout, and a Celery transport on the file system. ``DATABASE_URL`` and ``CELERY_BROKER_URL``
switch to PostgreSQL and Redis/RabbitMQ. Production sets ``DJANGO_PRODUCTION=1``, which turns on
every deploy check (HTTPS, HSTS, secure cookies) and refuses to start without a real secret.
"""

from pathlib import Path

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

# Django's generic classes take their type parameters at run time too (``ModelAdmin[Pool]``,
# ``ModelForm[Center]``, ``Paginator[Any]``), as the type checker wants them (pyproject.toml).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("INTERCONNECT_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

PRODUCTION = env.bool("DJANGO_PRODUCTION", default=False)
DEBUG = env.bool("DJANGO_DEBUG", default=not PRODUCTION)

_DEV_SECRET = "dev-only-insecure-secret-key-change-me-in-production-0123456789abcdef"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=_DEV_SECRET)
if PRODUCTION and SECRET_KEY == _DEV_SECRET:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_PRODUCTION=1")

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "registry",
    "verification",
    "brokers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "registry.middleware.RequestIdMiddleware",
    "interconnect.middleware.MetricsMiddleware",
    # A view that cannot reach PostgreSQL answers 503 + Retry-After, not 500 (RELIABILITY X3).
    "interconnect.middleware.DatabaseUnavailableMiddleware",
    # Last, as django-axes asks: it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "interconnect.urls"
WSGI_APPLICATION = "interconnect.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'interconnect.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker, beat, broker) write to one file. IMMEDIATE takes the
    # write lock at BEGIN, so a transaction never fails half-way on a lock upgrade, and the
    # busy timeout makes writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Authentication ---------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
# django-axes: lock an (ip, username) pair out for a while after repeated failed logins.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_RESET_ON_SUCCESS = True

# --- Internationalisation ---------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files -----------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").exists() else []
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "registry.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "registry.pagination.CappedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "registry.api.exceptions.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "tokens": env.str("THROTTLE_TOKENS", default="30/min"),
        "reverify": env.str("THROTTLE_REVERIFY", default="6/hour"),
    },
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Compute Interconnect API",
    "DESCRIPTION": (
        "The national registry and exchange for AI compute: hubs, clusters, centers, "
        "accelerator pools, their verification, placement and booking."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from drf-spectacular-sidecar: the docs work without any network.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a "status" field with their own choices: name each set.
    "ENUM_NAME_OVERRIDES": {
        "LifecycleStatusEnum": "registry.choices.Status",
        "BookingStatusEnum": "brokers.choices.BookingStatus",
        "OfferStatusEnum": "brokers.choices.OfferStatus",
    },
}

# --- Cache (throttling, rate limits) ----------------------------------------------------------
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

# --- Celery -----------------------------------------------------------------------------------
# Embedded default: a file-system transport in var/ (no server). Redis or RabbitMQ by URL.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery-queue"
    (_queue_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),
        "store_processed": False,
    }
    # The file-system transport has no fan-out exchange for remote control.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
else:
    # Redis: a task not acknowledged within this window is redelivered. It must exceed the
    # longest task's hard time limit, or a slow task would run twice (RELIABILITY 2).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
# Every task is idempotent, so a task whose worker died is redelivered, not lost.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Security (production) --------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Liveness/readiness probes come over plain HTTP from the orchestrator.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# --- Logging ----------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "interconnect.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="plain"),
        }
    },
    "filters": {"client_errors_short": {"()": "interconnect.logging.ClientErrorsShort"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Django's own console handler printed every django.* line a second time (the root
        # logger prints them already).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        # A 403 or 404 is an answer, not a fault: one line, without a traceback.
        "django.request": {"filters": ["client_errors_short"], "propagate": True},
    },
}

# --- Domain settings --------------------------------------------------------------------------
# Hosts an agent endpoint may not point at unless explicitly allowed (SSRF guard). Loopback is
# allowed by default so that simulated agents work on one machine; production should narrow it.
AGENT_ENDPOINT_ALLOW_LOOPBACK = env.bool("AGENT_ENDPOINT_ALLOW_LOOPBACK", default=not PRODUCTION)

# Mutual TLS with site agents (docs/tls.md). PLATFORM_TLS_DIR holds ca.pem (the authority's
# bundle every party trusts), platform.pem and platform.key (the platform's own certificate);
# when they exist, verification, dispatch and telemetry speak mutual TLS only. The authority's
# signing key: PLATFORM_CA_KEY_FILE, or the PEM itself in PLATFORM_CA_KEY (a secret), never in
# the database. Agents' certificates are valid AGENT_CERT_DAYS days.
PLATFORM_TLS_DIR = env.str("PLATFORM_TLS_DIR", default="")
PLATFORM_CA_KEY_FILE = env.str("PLATFORM_CA_KEY_FILE", default="")
PLATFORM_CA_CERT_FILE = env.str("PLATFORM_CA_CERT_FILE", default="")
AGENT_CERT_DAYS = env.float("AGENT_CERT_DAYS", default=30.0)
# Webhook targets on private or loopback addresses (SSRF guard); allowed only outside production.
WEBHOOK_ALLOW_PRIVATE_TARGETS = env.bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", default=not PRODUCTION)

# --- Verification (verification/; README "Verification") ---------------------------------------
# Simulated agents run time-scaled; the verifier must use the same factor (1.0 in production).
# Parsed with float(): django-environ's float reader mangles exponents ("5e-6").
VERIFICATION_TIME_SCALE = float(env.str("VERIFICATION_TIME_SCALE", default="1.0"))
# Measured / declared throughput below this fails the pool.
VERIFICATION_TOLERANCE = env.float("VERIFICATION_TOLERANCE", default=0.8)
# The challenge (README "Verification"): every accelerator of the sampled nodes computes a chain
# of products of size n, long enough that an honest device spends about TARGET_SECONDS (scaled).
VERIFICATION_MATRIX_SIZE = env.int("VERIFICATION_MATRIX_SIZE", default=1024)
VERIFICATION_MAX_MATRIX_SIZE = env.int("VERIFICATION_MAX_MATRIX_SIZE", default=8192)
VERIFICATION_TARGET_SECONDS = env.float("VERIFICATION_TARGET_SECONDS", default=4.0)
VERIFICATION_MIN_STEPS = env.int("VERIFICATION_MIN_STEPS", default=4)
# 128: with one product a step (composite steps off), as many products as 16 steps of 8 links
# gave, so a device of this CPU's speed still computes for about the target at small n.
VERIFICATION_MAX_STEPS = env.int("VERIFICATION_MAX_STEPS", default=128)
# Chained products behind each commitment, so a step lasts at least MIN_STEP_SECONDS at the
# declared speed (a fast accelerator would otherwise spend its time hashing, not computing), at
# most MAX_INNER. Default 1, composite steps off: their bound must allow each link's rounding to
# the input type, which also lets FP16 accumulation and one level of Strassen through inside the
# links (measured; docs/verification.md, "Composite steps"), and more than 8 links are nearly
# low-rank and cheaply approximated. Up to 8 is what an experiment may set.
VERIFICATION_MIN_STEP_SECONDS = env.float("VERIFICATION_MIN_STEP_SECONDS", default=0.05)
VERIFICATION_MAX_INNER = env.int("VERIFICATION_MAX_INNER", default=1)
# Steps checked per device, drawn after every commitment arrived: the last two always, the
# others at random (0 = every step). A prover that fakes a share q of the other steps goes
# unnoticed with probability <= (1 - q)^(s - 2) per run (docs/verification.md).
VERIFICATION_OPEN_STEPS = env.int("VERIFICATION_OPEN_STEPS", default=3)
# A chain of at most this many steps is checked whole (every step opened): with few steps the
# draw above leaves a prover who fakes half of them a coin toss.
VERIFICATION_OPEN_ALL_UP_TO = env.int("VERIFICATION_OPEN_ALL_UP_TO", default=16)
# Nodes challenged per run (all accelerators of each); 0 = every node, the default: the agent
# learns which nodes were drawn when the challenge arrives and chooses which hardware answers
# for them, so a sample proves only the hardware of as many nodes (docs/verification.md).
VERIFICATION_SAMPLE_NODES = env.int("VERIFICATION_SAMPLE_NODES", default=0)
# Products the agent keeps for opening, at most (bounds devices x steps x n^2 x the
# accumulator's bytes; one agent fronts the pool, and the verifier holds the opened ones).
VERIFICATION_MAX_CHALLENGE_BYTES = env.int("VERIFICATION_MAX_CHALLENGE_BYTES", default=2**30)
VERIFICATION_FREIVALDS_ROUNDS = env.int("VERIFICATION_FREIVALDS_ROUNDS", default=8)
VERIFICATION_RPC_TIMEOUT = env.float("VERIFICATION_RPC_TIMEOUT", default=60.0)
# Seconds the TLS check, the health checks and the inventory may take together, before the
# challenge is sent (past it the delivery is retried as unreachable): an agent cannot spend the
# task's time limit before the challenge and have it run out after (docs/verification.md).
VERIFICATION_PRECHALLENGE_SECONDS = env.float("VERIFICATION_PRECHALLENGE_SECONDS", default=30.0)
# A measured throughput above the catalog's peak for the challenge precision by more than this
# share is impossible and refused.
VERIFICATION_PEAK_MARGIN = env.float("VERIFICATION_PEAK_MARGIN", default=0.05)
# Simulated agents (inventory.simulated) pass only where this says the deployment is a demo or
# a test (make run and the test suite set it).
VERIFICATION_ACCEPT_SIMULATED = env.bool("VERIFICATION_ACCEPT_SIMULATED", default=False)
# A pass that measures below (1 - this) x the pool's best of its last passed runs is drift:
# the pool moves to degraded with the evidence.
VERIFICATION_DRIFT_THRESHOLD = env.float("VERIFICATION_DRIFT_THRESHOLD", default=0.15)
VERIFICATION_DRIFT_HISTORY = env.int("VERIFICATION_DRIFT_HISTORY", default=5)
VERIFICATION_MAX_RETRIES = env.int("VERIFICATION_MAX_RETRIES", default=5)
# Hard limit of one verification task; a running claim older than this may be taken over.
VERIFICATION_TASK_TIME_LIMIT = env.int("VERIFICATION_TASK_TIME_LIMIT", default=180)
# A queued run not picked up this long after its task was sent gets its task sent again.
VERIFICATION_REQUEUE_AFTER = env.int("VERIFICATION_REQUEUE_AFTER", default=600)
VERIFICATION_REVERIFY_HOURS = env.float("VERIFICATION_REVERIFY_HOURS", default=24.0)
VERIFICATION_REVERIFY_JITTER = env.float("VERIFICATION_REVERIFY_JITTER", default=0.5)
# An active or degraded pool whose re-verifications end `error` (its agent did not answer) this
# many times in a row fails: it cannot refuse re-verification and stay listed (at least 1).
VERIFICATION_MAX_CONSECUTIVE_ERRORS = env.int("VERIFICATION_MAX_CONSECUTIVE_ERRORS", default=3)
# After a failed verification no pool of the center (the failed one, or the same hardware as a
# new pool) may be submitted before a cool-down: this many seconds after the center's last
# failure, doubled for each other failure of its pools within the window, at most the maximum
# (so a cheat caught with probability p cannot simply be retried until it passes).
VERIFICATION_RESUBMIT_COOLDOWN = env.int("VERIFICATION_RESUBMIT_COOLDOWN", default=600)
VERIFICATION_RESUBMIT_COOLDOWN_MAX = env.int(
    "VERIFICATION_RESUBMIT_COOLDOWN_MAX", default=7 * 24 * 3600
)
VERIFICATION_RESUBMIT_WINDOW_DAYS = env.int("VERIFICATION_RESUBMIT_WINDOW_DAYS", default=30)
HEARTBEAT_DEGRADED_AFTER = env.int("HEARTBEAT_DEGRADED_AFTER", default=30)
HEARTBEAT_OFFLINE_AFTER = env.int("HEARTBEAT_OFFLINE_AFTER", default=120)
HEARTBEAT_RETENTION_DAYS = env.int("HEARTBEAT_RETENTION_DAYS", default=90)

# --- Broker (brokers/; README "Broker") --------------------------------------------------------
# Length of a ledger slot: booking windows are rounded outward to whole slots.
BROKER_SLOT_MINUTES = env.int("BROKER_SLOT_MINUTES", default=15)
# Pools the candidate query hands to the Python filters and scorers, at most.
BROKER_CANDIDATE_LIMIT = env.int("BROKER_CANDIDATE_LIMIT", default=64)
# The cheapest pools per model (that could fit by size) whose free capacity is computed first;
# all of them only when fewer than a handful fit.
BROKER_CANDIDATE_SCAN = env.int("BROKER_CANDIDATE_SCAN", default=512)
# Per-process snapshot of active pools' static facts used to propose candidates (0: off, every
# placement asks the database); status and free capacity are always read fresh.
BROKER_PLACEMENT_CACHE_SECONDS = env.float("BROKER_PLACEMENT_CACHE_SECONDS", default=60.0)
# When capacity is scarce, a firm holding this share of it gets no more (fair sharing).
BROKER_FAIR_SHARE_CAP = env.float("BROKER_FAIR_SHARE_CAP", default=0.5)
# Placement weights per latency class, overriding brokers.placement.scorers.DEFAULT_WEIGHTS.
BROKER_PLACEMENT_WEIGHTS: dict[str, dict[str, float]] = {}
# A held booking keeps its capacity this long unless confirmed (database time).
BROKER_HOLD_SECONDS = env.int("BROKER_HOLD_SECONDS", default=300)
# An earliest start this far in the past is clock skew and means now; further back it is refused.
BROKER_START_GRACE_SECONDS = env.int("BROKER_START_GRACE_SECONDS", default=120)
# Dispatch booked workloads to agents on commit (off for benchmarks without agents).
BROKER_DISPATCH = env.bool("BROKER_DISPATCH", default=True)
# gRPC server: worker threads per process and the message size limit both ways.
BROKER_GRPC_WORKERS = env.int("BROKER_GRPC_WORKERS", default=16)
BROKER_GRPC_MAX_MESSAGE_BYTES = env.int("BROKER_GRPC_MAX_MESSAGE_BYTES", default=4 * 1024 * 1024)
# WatchBooking streams one broker process may hold open (coroutines, not threads).
BROKER_GRPC_MAX_STREAMS = env.int("BROKER_GRPC_MAX_STREAMS", default=10_000)
# What the broker keeps back of a call's remaining time (at most a quarter of it): it gives up
# that much before its caller does, so no booking commits after its caller was told
# DEADLINE_EXCEEDED (the call's transit and the statement's own latency fit in it).
BROKER_DEADLINE_MARGIN_SECONDS = env.float("BROKER_DEADLINE_MARGIN_SECONDS", default=0.1)
# Book in one round trip (the broker_book function, PostgreSQL); 0: the Python path only.
BROKER_BOOK_FUNCTION = env.bool("BROKER_BOOK_FUNCTION", default=True)
# Group commit (brokers.group_commit): the concurrent bookings of one broker process share one
# transaction, each in its own savepoint, at most this many per batch; 0: one transaction each.
# On by default since nothing commits past its caller's deadline any more (the margin above, and
# broker_deadline_guard before every COMMIT: docs/broker-speed.md, "Deadlines").
BROKER_GROUP_COMMIT = env.bool("BROKER_GROUP_COMMIT", default=True)
BROKER_GROUP_COMMIT_MAX = env.int("BROKER_GROUP_COMMIT_MAX", default=32)
# Batches in flight at once per broker process (a committer thread and connection each).
BROKER_GROUP_COMMIT_FLIGHTS = env.int("BROKER_GROUP_COMMIT_FLIGHTS", default=1)
