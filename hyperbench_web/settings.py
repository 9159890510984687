"""HyperBench web settings: one module, driven by environment variables.

The embedded default (SQLite under ``var/``, local Redis, ``file://`` datasets
and artifacts) needs no variable at all; production sets ``DATABASE_URL``,
``CELERY_BROKER_URL``, ``SECRET_KEY`` and the storage roots.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlparse

import environ
from django.core.exceptions import ImproperlyConfigured

from worker import brokertls

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("HYPERBENCH_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
env.smart_cast = False

DEBUG = env.bool("DEBUG", default=False)
# A secret is required outside DEBUG; the demo and the tests pass one explicitly.
SECRET_KEY = env.str("SECRET_KEY") if not DEBUG else env.str("SECRET_KEY", default="dev-only-not-secret")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

# --- HTTPS (deploy) -------------------------------------------------------------
# HYPERBENCH_HTTPS=true: the site is served over https by a TLS proxy in front of
# gunicorn, which sets X-Forwarded-Proto (the compose stack: web binds 127.0.0.1 only,
# so nothing else can reach it and forge the header). It turns on what
# `manage.py check --deploy` asks for: https redirects, secure session and CSRF
# cookies, HSTS. Each can be set on its own. Off by default: the one-machine demo
# is plain http on 127.0.0.1, where secure cookies would make the admin unusable.
HTTPS = env.bool("HYPERBENCH_HTTPS", default=False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=HTTPS)
# HSTS: a year once https is on, for this host and its subdomains. Preloading is a
# promise to the browsers' list that only the domain's owner can make: off unless
# SECURE_HSTS_PRELOAD=true, and its deploy check (security.W021) is silenced meanwhile.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here: the docs work offline
    "apps.catalog",
    "apps.runs",
    "apps.hosts",
    "apps.quotas",
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
]

ROOT_URLCONF = "hyperbench_web.urls"
WSGI_APPLICATION = "hyperbench_web.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'hyperbench.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, control worker and tests write from separate processes: take the write
    # lock at BEGIN and wait for it instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 30})
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("TEST_SQLITE_PATH", default=str(VAR_DIR / "test.sqlite3"))
    }
else:
    # A server database: keep each process's connection across requests and control tasks (a new
    # PostgreSQL connection per event was most of an event's cost), checked before reuse.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("HYPERBENCH_DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("HYPERBENCH_STATIC_ROOT", default=str(VAR_DIR / "static")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # Every 4xx answer documented, strict request bodies, links (apps/api/schema.py).
    "DEFAULT_SCHEMA_CLASS": "apps.api.schema.AutoSchema",
    # One error shape: service errors mapped to 400/404/409, quotas to 403/429 (apps/api/errors.py).
    "EXCEPTION_HANDLER": "apps.api.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "apps.api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    # JSON nested deeper than the API stores is a 400 (apps/api/parsers.py); forms as DRF's.
    "DEFAULT_PARSER_CLASSES": [
        "apps.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Rates: HYPERBENCH_API_THROTTLE_* below, read at each request (apps/api/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": [
        "apps.api.throttling.AnonThrottle",
        "apps.api.throttling.UserThrottle",
    ],
}
# The most items a list answers (``?limit=`` above it is clamped).
HYPERBENCH_API_MAX_PAGE_SIZE = env.int("HYPERBENCH_API_MAX_PAGE_SIZE", default=500)
# Throttles, as DRF rates (<n>/second|minute|hour|day; empty: off). Requests without a token per
# client address, with one per user, and token requests (password guessing) per client address.
HYPERBENCH_API_THROTTLE_ANON = env.str("HYPERBENCH_API_THROTTLE_ANON", default="120/minute")
HYPERBENCH_API_THROTTLE_USER = env.str("HYPERBENCH_API_THROTTLE_USER", default="1000/minute")
HYPERBENCH_API_THROTTLE_TOKEN = env.str("HYPERBENCH_API_THROTTLE_TOKEN", default="10/minute")
# Throttle counters live in Django's cache: per process by default; give several web
# processes one shared cache, e.g. CACHE_URL=redis://127.0.0.1:6379/1.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
SPECTACULAR_SETTINGS = {
    "TITLE": "HyperBench API",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,  # request bodies get their own (strict) components
    "ENUM_NAME_OVERRIDES": {
        "RunStateEnum": "apps.runs.models.Run.State",
        "ShardStateEnum": "apps.runs.models.RunShard.State",
        "ComparisonStateEnum": "apps.runs.models.Comparison.State",
        "DatasetTaskEnum": "apps.catalog.models.Dataset.Task",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.api.schema.postprocess",
    ],
}
# Run quotas per user (apps/quotas): the defaults of users without their own (set by staff in the
# admin, Quotas > User quotas); staff have none unless set there. 0: no limit.
HYPERBENCH_QUOTA_CONCURRENT_RUNS = env.int("HYPERBENCH_QUOTA_CONCURRENT_RUNS", default=10)
HYPERBENCH_QUOTA_SHARDS_PER_RUN = env.int("HYPERBENCH_QUOTA_SHARDS_PER_RUN", default=16)
HYPERBENCH_QUOTA_RUNS_PER_DAY = env.int("HYPERBENCH_QUOTA_RUNS_PER_DAY", default=200)
# Bytes of uploaded dataset versions (POST /api/v1/datasets/upload/) a user may store in all.
HYPERBENCH_QUOTA_UPLOAD_BYTES = env.int("HYPERBENCH_QUOTA_UPLOAD_BYTES", default=20 * 1024**3)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- Celery -----------------------------------------------------------------
# Visibility timeout policy: host tasks are acks_late, so Redis re-delivers an
# unacknowledged message after this many seconds. It must exceed the longest
# shard (HYPERBENCH_CONTAINER_TIMEOUT_S plus sync time), or a healthy long shard
# would be delivered twice; the shard fence in the worker makes a double
# delivery harmless, only wasteful.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# The control worker (the only consumer of this app's messages) keeps its unacknowledged
# messages under keys of its own, with a short window: its tasks take milliseconds, so an
# event it held when it was killed goes back on the `control` queue after
# CELERY_CONTROL_VISIBILITY_TIMEOUT_S, while the host workers' long window (their own
# `unacked` keys, worker/celery_app.py) is untouched. The web process only publishes.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_CONTROL_VISIBILITY_TIMEOUT_S", default=60),
    "unacked_key": "hyperbench.control.unacked",
    "unacked_index_key": "hyperbench.control.unacked_index",
    "unacked_mutex_key": "hyperbench.control.unacked_mutex",
}
# A broker over the internet (remote hosts): rediss:// with the server's certificate verified
# against HYPERBENCH_BROKER_CA_FILE (a CA bundle, or "system"), an optional client certificate
# (HYPERBENCH_BROKER_CERT_FILE/_KEY_FILE), and a password; never CERT_NONE (worker/brokertls.py,
# docs/operations.md "Joining a remote host"). The control worker checks it once at start.
try:
    CELERY_BROKER_USE_SSL = brokertls.ssl_options_from_env(CELERY_BROKER_URL)
except brokertls.BrokerConfigError as _e:
    raise ImproperlyConfigured(str(_e)) from None
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "control"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# --- HyperBench ---------------------------------------------------------------
# Datasets may only come from these roots (file://) and buckets (s3://): the
# allow-list that keeps API users from pointing the platform anywhere else.
HYPERBENCH_DATASET_ROOTS = [
    Path(p).resolve() for p in env.list("HYPERBENCH_DATASET_ROOTS", default=[str(VAR_DIR / "datasets")])
]

# Uploaded datasets (POST /api/v1/datasets/upload/, docs/operations.md "Dataset uploads"): stored
# under this folder, which must lie under one of the dataset roots (else uploads answer 503),
# as <root>/<name>/<version>/, staged in <root>/.staging/ meanwhile.
HYPERBENCH_UPLOADS_ROOT = Path(
    env.str(
        "HYPERBENCH_UPLOADS_ROOT",
        default=str([*HYPERBENCH_DATASET_ROOTS, VAR_DIR / "datasets"][0] / "uploads"),
    )
).resolve()
# Where uploaded versions are stored: empty (the default) is file:// under HYPERBENCH_UPLOADS_ROOT as
# above; file:///dir/ is that folder instead (under a dataset root too); s3://bucket/prefix/ writes them
# to <prefix><name>/<version>/ in that bucket (one of HYPERBENCH_S3_BUCKETS, with the S3 settings below)
# after converting them in <HYPERBENCH_UPLOADS_ROOT>/.staging/, and registers the s3:// URI.
HYPERBENCH_UPLOADS_URI = env.str("HYPERBENCH_UPLOADS_URI", default="").strip()
# The uploaded file itself (streamed to disk, refused past this), and an archive's contents:
# bytes once unpacked, members, and how many times an archive (or a zip member) may inflate.
HYPERBENCH_UPLOAD_MAX_BYTES = env.int("HYPERBENCH_UPLOAD_MAX_BYTES", default=2 * 1024**3)
HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES = env.int("HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES", default=8 * 1024**3)
HYPERBENCH_UPLOAD_MAX_FILES = env.int("HYPERBENCH_UPLOAD_MAX_FILES", default=200_000)
HYPERBENCH_UPLOAD_MAX_RATIO = env.int("HYPERBENCH_UPLOAD_MAX_RATIO", default=200)
# Importers (apps/catalog/importers/, uploads and manage.py import_dataset): one image's bytes and
# pixels (Pillow's own MAX_IMAGE_PIXELS by default), a JSON file read whole, samples, PDF pages/dpi.
HYPERBENCH_IMPORT_MAX_IMAGE_BYTES = env.int("HYPERBENCH_IMPORT_MAX_IMAGE_BYTES", default=50 * 1024**2)
HYPERBENCH_IMPORT_MAX_IMAGE_PIXELS = env.int("HYPERBENCH_IMPORT_MAX_IMAGE_PIXELS", default=89_478_485)
HYPERBENCH_IMPORT_MAX_JSON_BYTES = env.int("HYPERBENCH_IMPORT_MAX_JSON_BYTES", default=512 * 1024**2)
HYPERBENCH_IMPORT_MAX_SAMPLES = env.int("HYPERBENCH_IMPORT_MAX_SAMPLES", default=1_000_000)
HYPERBENCH_IMPORT_PDF_DPI = env.int("HYPERBENCH_IMPORT_PDF_DPI", default=150)
HYPERBENCH_IMPORT_MAX_PDF_PAGES = env.int("HYPERBENCH_IMPORT_MAX_PDF_PAGES", default=5000)


def _s3_endpoint(name: str) -> str:
    """An S3 endpoint URL from the environment: http(s)://host[:port], nothing else; empty means AWS.

    Refuses a path, query, credentials in the URL and link-local hosts (the cloud
    metadata service lives at 169.254.169.254): the endpoint is where registration
    sends the server's S3 keys.
    """
    raw = env.str(name, default="").strip()
    if not raw:
        return ""
    parsed = urlparse(raw)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username is not None
        or parsed.path not in ("", "/")
        or parsed.query
        or parsed.fragment
    ):
        raise ImproperlyConfigured(f"{name} must look like http(s)://host[:port], not {raw!r}.")
    try:
        ip = ipaddress.ip_address(parsed.hostname)
        link_local = ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254")  # AWS IMDS over IPv6
    except ValueError:
        link_local = parsed.hostname.lower() in ("metadata", "metadata.google.internal")
    if link_local:
        raise ImproperlyConfigured(f"{name} points at a link-local (metadata) address: {raw!r}.")
    return f"{parsed.scheme}://{parsed.netloc}"


# S3 datasets (registration streams the manifest and lists the prefix from here).
# Same variables as the host worker (worker/config.py), so one environment file
# configures both. The endpoint, keys and buckets come from here only, never from
# a request; with no bucket listed, s3:// registration is off. No credential chain
# is consulted (it would reach the instance metadata service): give keys explicitly.
HYPERBENCH_S3_ENDPOINT_URL = _s3_endpoint("HYPERBENCH_S3_ENDPOINT_URL")
HYPERBENCH_S3_REGION = env.str("HYPERBENCH_S3_REGION", default="us-east-1")
HYPERBENCH_S3_ACCESS_KEY_ID = env.str("AWS_ACCESS_KEY_ID", default="")
HYPERBENCH_S3_SECRET_ACCESS_KEY = env.str("AWS_SECRET_ACCESS_KEY", default="")
HYPERBENCH_S3_SESSION_TOKEN = env.str("AWS_SESSION_TOKEN", default="")
HYPERBENCH_S3_BUCKETS = [b for b in env.list("HYPERBENCH_S3_BUCKETS", default=[]) if b]
HYPERBENCH_S3_TIMEOUT_S = env.int("HYPERBENCH_S3_TIMEOUT_S", default=30)
if HYPERBENCH_S3_TIMEOUT_S < 1:
    raise ImproperlyConfigured("HYPERBENCH_S3_TIMEOUT_S must be at least 1.")
HYPERBENCH_ARTIFACTS_URI = env.str(
    "HYPERBENCH_ARTIFACTS_URI", default=(VAR_DIR / "artifacts").resolve().as_uri() + "/"
)
# The prediction cache (worker/predcache.py): where hosts keep validated predictions by content.
# Empty: <HYPERBENCH_ARTIFACTS_URI>cache/predictions/. It must lie under the hosts' artifact roots.
HYPERBENCH_PREDICTION_CACHE_URI = env.str("HYPERBENCH_PREDICTION_CACHE_URI", default="")


def _image_id(name: str) -> str:
    """A pinned image id from the environment: ``sha256:`` + 64 hex digits, or "" when unset.

    Unset is allowed so that manage.py and the admin work before the images are
    built; starting a run then refuses, naming the variable (apps/runs/services.py).
    """
    from django.core.exceptions import ImproperlyConfigured

    from worker.contract import is_image_id  # stdlib only: the one worker module the web side uses

    raw = env.str(name, default="").strip()
    if raw and not is_image_id(raw):
        raise ImproperlyConfigured(
            f"{name} must be a full image id (sha256: and 64 hex digits, as printed by "
            f"`docker image inspect --format '{{{{.Id}}}}' IMAGE`), not {raw!r}."
        )
    return raw


# System images (eval, report): a reference plus the image id it must resolve to
# on every host, so they are pinned like registered models (docs/architecture.md).
_IMAGES_VERSION_FILE = BASE_DIR / "images" / "VERSION"
_IMAGES_VERSION = _IMAGES_VERSION_FILE.read_text().strip() if _IMAGES_VERSION_FILE.is_file() else "latest"
HYPERBENCH_EVAL_IMAGE = env.str("HYPERBENCH_EVAL_IMAGE", default=f"hyperbench/eval:{_IMAGES_VERSION}")
HYPERBENCH_EVAL_IMAGE_DIGEST = _image_id("HYPERBENCH_EVAL_IMAGE_DIGEST")
HYPERBENCH_REPORT_IMAGE = env.str("HYPERBENCH_REPORT_IMAGE", default=f"hyperbench/report:{_IMAGES_VERSION}")
HYPERBENCH_REPORT_IMAGE_DIGEST = _image_id("HYPERBENCH_REPORT_IMAGE_DIGEST")
HYPERBENCH_CONTAINER_TIMEOUT_S = env.int("HYPERBENCH_CONTAINER_TIMEOUT_S", default=3600)
HYPERBENCH_CONTAINER_MEMORY_MB = env.int("HYPERBENCH_CONTAINER_MEMORY_MB", default=4096)
HYPERBENCH_CONTAINER_CPUS = env.float("HYPERBENCH_CONTAINER_CPUS", default=2.0)
HYPERBENCH_CONTAINER_PIDS = env.int("HYPERBENCH_CONTAINER_PIDS", default=256)
HYPERBENCH_MAX_SHARDS = env.int("HYPERBENCH_MAX_SHARDS", default=64)
# A running shard with no news for this long, whose host does not report its
# container, is dispatched again (at most 3 attempts); the reconciler looks
# every HYPERBENCH_RECONCILE_S seconds (celery beat inside the control worker).
HYPERBENCH_STALE_SHARD_S = env.int("HYPERBENCH_STALE_SHARD_S", default=300)
HYPERBENCH_RECONCILE_S = env.int("HYPERBENCH_RECONCILE_S", default=10)
# A pending shard of a CPU model that no idle host started for this long lost its message.
HYPERBENCH_PENDING_SHARD_S = env.int("HYPERBENCH_PENDING_SHARD_S", default=120)
# The hosts' event batches (hb.events) are drained every HYPERBENCH_EVENT_DRAIN_S, up to
# HYPERBENCH_EVENT_DRAIN_MAX messages per drain (apps/runs/drain.py).
HYPERBENCH_EVENT_DRAIN_S = env.float("HYPERBENCH_EVENT_DRAIN_S", default=0.25)
HYPERBENCH_EVENT_DRAIN_MAX = env.int("HYPERBENCH_EVENT_DRAIN_MAX", default=2000)
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "hyperbench.control.reconcile",
        "schedule": float(HYPERBENCH_RECONCILE_S),
        "options": {"queue": "control", "expires": float(HYPERBENCH_RECONCILE_S)},
    },
    "drain-events": {
        "task": "hyperbench.control.drain_events",
        "schedule": HYPERBENCH_EVENT_DRAIN_S,
        "options": {"queue": "control", "expires": max(1.0, 4 * HYPERBENCH_EVENT_DRAIN_S)},
    },
}
# A host that has not reported for this long (three heartbeats) is shown as silent.
HYPERBENCH_HOST_SILENT_S = env.int("HYPERBENCH_HOST_SILENT_S", default=90)

# --- Artifact store, web side ----------------------------------------------------
# The API links to run artifacts: file:// ones are streamed by the web process,
# s3:// ones are presigned (and the report streamed) with the S3 endpoint and
# keys above (HYPERBENCH_S3_*); the web side never writes artifacts (manage.py
# prune_predcache deletes old prediction cache entries, with these keys). An artifact
# is served only when its URI lies under HYPERBENCH_ARTIFACTS_URI or one of these
# extra s3://bucket/prefix/ roots (say, the prefix runs used before a move).
HYPERBENCH_ARTIFACTS_S3_ROOTS = [r for r in env.list("HYPERBENCH_ARTIFACTS_S3_ROOTS", default=[]) if r]
HYPERBENCH_ARTIFACTS_URL_TTL_S = env.int("HYPERBENCH_ARTIFACTS_URL_TTL_S", default=900)
if not 1 <= HYPERBENCH_ARTIFACTS_URL_TTL_S <= 7 * 24 * 3600:
    # SigV4 presigned URLs live at most 7 days.
    raise ImproperlyConfigured("HYPERBENCH_ARTIFACTS_URL_TTL_S must be between 1 and 604800 seconds.")

# --- API models: what staff may register ---------------------------------------------
# An API model's container runs with host networking and sends requests to its
# endpoint_base_url: link-local and metadata addresses are always refused; loopback,
# private and other non-public addresses only for these hosts, and loopback never on
# the platform's own service ports (Redis, PostgreSQL, RabbitMQ, the web server, Flower).
HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS = env.list(
    "HYPERBENCH_MODEL_ENDPOINT_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"]
)
HYPERBENCH_MODEL_ENDPOINT_DENIED_PORTS = [
    int(p)
    for p in env.list(
        "HYPERBENCH_MODEL_ENDPOINT_DENIED_PORTS", default=["6379", "5432", "5672", "8000", "5555"]
    )
]
# The variables an API model may read its key from on the host workers: names under these
# prefixes only (never SECRET_KEY, DATABASE_URL, AWS_*, CELERY_*...).
HYPERBENCH_MODEL_KEY_ENV_PREFIXES = [
    p for p in env.list("HYPERBENCH_MODEL_KEY_ENV_PREFIXES", default=["HB_", "HYPERBENCH_MODEL_KEY_"]) if p
]
