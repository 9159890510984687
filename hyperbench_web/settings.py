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

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("HYPERBENCH_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
env.smart_cast = False

DEBUG = env.bool("DEBUG", default=False)
# A secret is required outside DEBUG; the demo and the tests pass one explicitly.
SECRET_KEY = env.str("SECRET_KEY") if not DEBUG else env.str("SECRET_KEY", default="dev-only-not-secret")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

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
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HyperBench API",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

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
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_S", default=4 * 3600)
}
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
HYPERBENCH_RECONCILE_S = env.int("HYPERBENCH_RECONCILE_S", default=60)
CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "hyperbench.control.reconcile",
        "schedule": float(HYPERBENCH_RECONCILE_S),
        "options": {"queue": "control", "expires": float(HYPERBENCH_RECONCILE_S)},
    },
}
# A host that has not reported for this long (three heartbeats) is shown as silent.
HYPERBENCH_HOST_SILENT_S = env.int("HYPERBENCH_HOST_SILENT_S", default=90)

# --- Artifact store, web side ----------------------------------------------------
# The API links to run artifacts: file:// ones are streamed by the web process,
# s3:// ones are presigned (and the report streamed) with the S3 endpoint and
# keys above (HYPERBENCH_S3_*); the web side never writes artifacts. An artifact
# is served only when its URI lies under HYPERBENCH_ARTIFACTS_URI or one of these
# extra s3://bucket/prefix/ roots (say, the prefix runs used before a move).
HYPERBENCH_ARTIFACTS_S3_ROOTS = [r for r in env.list("HYPERBENCH_ARTIFACTS_S3_ROOTS", default=[]) if r]
HYPERBENCH_ARTIFACTS_URL_TTL_S = env.int("HYPERBENCH_ARTIFACTS_URL_TTL_S", default=900)
if not 1 <= HYPERBENCH_ARTIFACTS_URL_TTL_S <= 7 * 24 * 3600:
    # SigV4 presigned URLs live at most 7 days.
    raise ImproperlyConfigured("HYPERBENCH_ARTIFACTS_URL_TTL_S must be between 1 and 604800 seconds.")
