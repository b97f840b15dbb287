"""Production settings read from the environment: each case imports feedback_app.settings in a fresh
interpreter with a clean environment, so nothing from the test settings leaks in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json
from feedback_app import settings as s
db = s.DATABASES["default"]
layer = s.CHANNEL_LAYERS["default"]
print(json.dumps({
    "DEBUG": s.DEBUG,
    "SECRET_KEY": s.SECRET_KEY,
    "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "CSRF_TRUSTED_ORIGINS": s.CSRF_TRUSTED_ORIGINS,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "SESSION_COOKIE_HTTPONLY": s.SESSION_COOKIE_HTTPONLY,
    "DB_ENGINE": db["ENGINE"],
    "DB_NAME": str(db["NAME"]),
    "DB_HOST": db.get("HOST"),
    "DB_USER": db.get("USER"),
    "DB_OPTIONS": {k: v for k, v in db.get("OPTIONS", {}).items() if isinstance(v, (str, int, float, bool))},
    "LAYER_BACKEND": layer["BACKEND"],
    "LAYER_HOSTS": layer.get("CONFIG", {}).get("hosts"),
    "DATA_DIR": str(s.DATA_DIR),
    "PROXY_HEADER": getattr(s, "SECURE_PROXY_SSL_HEADER", None),
}))
"""


def load(tmp_path, **env):
    """Import the production settings with only `env` (plus PATH and a scratch DATA_DIR) set."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATA_DIR": str(tmp_path / "data"),
             "PYTHONPATH": str(ROOT)}
    clean.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


def settings_of(tmp_path, **env) -> dict:
    proc = load(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_secret_key_with_debug_off_refuses_to_start(tmp_path):
    proc = load(tmp_path)
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr
    assert "SECRET_KEY" in proc.stderr
    proc = load(tmp_path, DEBUG="0", SECRET_KEY="")
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr


def test_debug_without_secret_key_uses_a_development_key(tmp_path):
    s = settings_of(tmp_path, DEBUG="1")
    assert s["DEBUG"] is True
    assert s["SECRET_KEY"]
    # plain-HTTP local runs: cookies follow DEBUG
    assert s["SESSION_COOKIE_SECURE"] is False


def test_defaults_are_production_safe(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="k" * 50)
    assert s["DEBUG"] is False
    assert s["SECRET_KEY"] == "k" * 50
    assert s["SESSION_COOKIE_SECURE"] is True
    assert s["CSRF_COOKIE_SECURE"] is True
    assert s["SESSION_COOKIE_HTTPONLY"] is True
    assert s["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert s["PROXY_HEADER"] is None


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "nonsense"])
def test_debug_stays_off_unless_explicitly_on(tmp_path, value):
    assert settings_of(tmp_path, SECRET_KEY="x", DEBUG=value)["DEBUG"] is False


def test_secure_cookies_can_be_turned_off_explicitly(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x", SECURE_COOKIES="0")
    assert s["SESSION_COOKIE_SECURE"] is False
    assert s["CSRF_COOKIE_SECURE"] is False


def test_allowed_hosts_and_trusted_origins_from_env(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x", ALLOWED_HOSTS=" review.example.org, .example.net ,,",
                    CSRF_TRUSTED_ORIGINS="https://review.example.org")
    assert s["ALLOWED_HOSTS"] == ["review.example.org", ".example.net"]
    assert s["CSRF_TRUSTED_ORIGINS"] == ["https://review.example.org"]


def test_behind_a_tls_proxy_trusts_x_forwarded_proto(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x", BEHIND_TLS_PROXY="1")
    assert s["PROXY_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_sqlite_by_default_in_data_dir_with_immediate_transactions(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x")
    assert s["DB_ENGINE"] == "django.db.backends.sqlite3"
    assert Path(s["DB_NAME"]) == (tmp_path / "data" / "feedback.sqlite3").resolve()
    assert s["DB_OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert s["DB_OPTIONS"]["timeout"] > 0
    assert (tmp_path / "data").is_dir()


def test_database_url_selects_postgresql(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x", DATABASE_URL="postgres://review:pw@db.internal:5432/feedback")
    assert s["DB_ENGINE"] == "django.db.backends.postgresql"
    assert s["DB_NAME"] == "feedback"
    assert s["DB_HOST"] == "db.internal"
    assert s["DB_USER"] == "review"
    # server-side binding with prepared statements, unless turned off (for a pooler that drops them)
    assert s["DB_OPTIONS"]["server_side_binding"] is True and s["DB_OPTIONS"]["prepare_threshold"] == 5
    off = settings_of(tmp_path, SECRET_KEY="x", DATABASE_URL="postgres://review:pw@db.internal:5432/feedback",
                      DATABASE_PREPARED_STATEMENTS="0")
    assert "server_side_binding" not in off["DB_OPTIONS"] and "prepare_threshold" not in off["DB_OPTIONS"]


def test_in_memory_channel_layer_without_redis(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x")
    assert s["LAYER_BACKEND"] == "channels.layers.InMemoryChannelLayer"


def test_redis_url_selects_channels_redis_without_socket_timeout(tmp_path):
    s = settings_of(tmp_path, SECRET_KEY="x", REDIS_URL="redis://cache.internal:6379/2")
    assert s["LAYER_BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert s["LAYER_HOSTS"] == [{"address": "redis://cache.internal:6379/2", "socket_timeout": None}]
