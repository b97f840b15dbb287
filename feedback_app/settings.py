"""Settings for the feedback app, read from the environment.

Defaults are safe for production (DEBUG off, a SECRET_KEY is required, secure
cookies) and need no services: SQLite in DATA_DIR, the in-memory channel
layer, the database task queue. Set DATABASE_URL and REDIS_URL to scale out.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "insecure-development-key-do-not-use-in-production"
    else:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
IMPORT_DIR = DATA_DIR / "imports"
MODEL_DIR = DATA_DIR / "models"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the docs page's JS/CSS, served locally (no CDN)
    "django_htmx",
    "channels",
    "django_tasks",
    "django_tasks_db",
    "annotation",
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
    "feedback_app.security.ContentSecurityPolicyMiddleware",  # CSP on every response (docs/security.md)
    "feedback_app.security.LoginThrottleMiddleware",  # 429 page for throttled logins
    "django_htmx.middleware.HtmxMiddleware",
    "feedback_app.middleware.DatabaseUnavailableMiddleware",  # database down: 503 + Retry-After, not a 500
]

ROOT_URLCONF = "feedback_app.urls"
WSGI_APPLICATION = "feedback_app.wsgi.application"
ASGI_APPLICATION = "feedback_app.asgi.application"

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

# Database: embedded SQLite by default, PostgreSQL (or any dj-database-url URL) from DATABASE_URL.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A fixed test database name, so live-server tests in other processes find it.
        DATABASES["default"]["TEST"] = {"NAME": "test_feedback" + os.environ.get("TEST_DB_SUFFIX", "")}
        if env_bool("DATABASE_POOL", True):
            # Every request runs in a fresh copy of the server's context (feedback_app/bridge.py), so Django's
            # persistent connection (CONN_MAX_AGE, kept per context) is never reused and each request would
            # open one (10+ ms, a server process). A pool per process lends connections to the requests
            # instead; each is checked when lent (CONN_HEALTH_CHECKS).
            DATABASES["default"]["CONN_MAX_AGE"] = 0
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
                "min_size": 2, "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "10")),
                # how long a request waits for a connection (also, while the database is down, before its 503);
                # short, because requests queue behind the few request threads (WEB_THREADS) while they wait
                "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT", "3")),
            }
        if env_bool("DATABASE_PREPARED_STATEMENTS", True):
            # Parameters bound by the server, and a statement that ran 5 times on a connection prepared
            # there (psycopg's prepare_threshold): PostgreSQL then no longer parses and plans it on each run,
            # about two fifths of its CPU per answer in the review loop (docs/benchmarks.md). A prepared
            # statement keeps its plan until its tables are analyzed again: autovacuum does that, and
            # `manage.py serve` does it for tables autovacuum leaves alone (annotation/dbupkeep.py). Turn it
            # off (DATABASE_PREPARED_STATEMENTS=0) behind a pooler that drops prepared statements
            # (PgBouncer in transaction mode before 1.21, or without max_prepared_statements).
            DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "feedback.sqlite3",
            "OPTIONS": {
                # IMMEDIATE: writers take the lock when the transaction starts, so two
                # claimers never both read-then-upgrade and deadlock.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file database in tests too: the live server, the worker and websockets share it.
            "TEST": {"NAME": str(DATA_DIR / f"test_feedback{os.environ.get('TEST_DB_SUFFIX', '')}.sqlite3")},
        }
    }
# A process started by a test (a worker) must use the test database that the test runner made.
if os.environ.get("DATABASE_NAME_OVERRIDE"):
    DATABASES["default"]["NAME"] = os.environ["DATABASE_NAME_OVERRIDE"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Live updates: Redis when REDIS_URL is set, otherwise the in-memory layer (one process).
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # socket_timeout None: redis-py 8 otherwise drops idle websocket groups after 5 s.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Background work: Django's tasks API on the database backend (see annotation/jobs.py).
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "gpu"],
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Password checks go through the login throttle (feedback_app/security.py).
AUTHENTICATION_BACKENDS = ["feedback_app.security.ThrottledModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "project-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Uploads: large import files stream to disk, never into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
IMPORT_MAX_BYTES = int(os.environ.get("IMPORT_MAX_BYTES", 2 * 1024**3))
# Threads per web process that run requests other than export downloads and import uploads
# (feedback_app/asgi.py). More only contend for the GIL: a thread holding a transaction waits behind the
# others (16 reviewers, 2 processes on 2 cores: 99-114 answers/s with 2 threads, 75-82 with 1, 80-92
# with 4, 79-93 with 10; docs/architecture.md).
WEB_THREADS = int(os.environ.get("WEB_THREADS", "2"))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Cookies and transport security. Off only where explicitly allowed (plain-HTTP local runs).
SECURE_COOKIES = env_bool("SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
# Behind a reverse proxy that terminates TLS: trust its X-Forwarded-Proto, and (manage.py serve) its
# X-Forwarded-For as the client address. Never on a server that clients reach directly.
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.api.authentication.TokenAuthentication",  # DRF's, one SQL statement
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON and form bodies within DATA_UPLOAD_MAX_MEMORY_SIZE (413 past it), JSON at most 64 levels deep
    "DEFAULT_PARSER_CLASSES": [
        "annotation.api.parsers.JSONParser",
        "annotation.api.parsers.FormParser",
        "annotation.api.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Feedback app API",
    "DESCRIPTION": "Projects, items, the review queue, answers, imports and exports.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
