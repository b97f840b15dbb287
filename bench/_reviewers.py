"""Shared parts of the reviewer benchmarks (bench/load_reviewers.py, bench/soak.py).

- a benchmark database per project size (PostgreSQL), filled through the real import path
  (`manage.py import_items`) with bench/import_export.py's synthetic trajectories, and kept
  between runs;
- the production server (`manage.py serve`, DEBUG off, PostgreSQL + Redis) on a free port;
- reviewer users with API tokens;
- a small asyncio HTTP/1.1 client with keep-alive (one connection per simulated reviewer), so the
  client side costs little CPU on a machine the server shares;
- latency statistics.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/5")
SECRET_KEY = "benchmark-only-secret-key-not-for-production-use-0123456789"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(db_name: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "feedback_app.settings",
        "DATABASE_URL": f"{PG}/{db_name}",
        "REDIS_URL": REDIS,
        "SECRET_KEY": SECRET_KEY,
        "DEBUG": "0",
        "SECURE_COOKIES": "0",  # plain HTTP on localhost
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("DATABASE_NAME_OVERRIDE", None)
    env.pop("TEST_DB_SUFFIX", None)
    env.setdefault("DATA_DIR", str(Path(tempfile.gettempdir()) / f"{db_name}-data"))
    return env


# --- the database -------------------------------------------------------------------------------------


def _admin_conn():
    import psycopg

    return psycopg.connect(f"{PG}/postgres", autocommit=True)


def database_exists(name: str) -> bool:
    with _admin_conn() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def create_database(name: str, *, drop: bool = False):
    if not name.startswith("feedback_bench"):
        raise SystemExit(f"refusing to touch database {name!r}: benchmark databases are called feedback_bench*")
    with _admin_conn() as conn:
        if drop:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def django_setup(db_name: str):
    """Point this process's Django at the benchmark database (call once, before any Django import)."""
    for k, v in server_env(db_name).items():
        os.environ[k] = v
    import django

    django.setup()


def manage(env: dict, *args: str, quiet=True):
    cmd = [sys.executable, "manage.py", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=quiet, text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"manage.py {' '.join(args)} failed ({proc.returncode})")
    return proc


def project_name(steps: int) -> str:
    return f"Reviewers benchmark, {steps:,} steps"


def write_trajectories(path: Path, steps: int, seed: int = 1) -> tuple[int, int]:
    """bench/import_export.py's generator, until `steps` steps are written. Returns (items, steps)."""
    import orjson
    from import_export import make_trajectory

    rng = random.Random(seed)
    n = total = 0
    with open(path, "wb", buffering=1 << 20) as f:
        while total < steps:
            traj = make_trajectory(rng, n)
            total += len(traj["steps"])
            n += 1
            f.write(orjson.dumps(traj, option=orjson.OPT_APPEND_NEWLINE))
    return n, total


def prepare_database(steps: int, *, rebuild: bool = False, log=print) -> tuple[str, dict]:
    """Create (or reuse) feedback_bench_<steps> with the imported project. Runs before django_setup
    in this process: the import runs as `manage.py import_items`, like an operator would."""
    db_name = f"feedback_bench_{steps}"
    env = server_env(db_name)
    info = None
    if database_exists(db_name) and not rebuild:
        manage(env, "migrate", "--noinput", "-v0")  # built by an older version: today's schema
        info = _probe(env, steps)
    if info is None:
        log(f"building {db_name}: migrate, generate {steps:,} steps, manage.py import_items ...")
        create_database(db_name, drop=True)
        manage(env, "migrate", "--noinput", "-v0")
        probe = _run_py(env, f"""
from annotation.models import Project
p = Project.objects.create(name={project_name(steps)!r}, answers_per_item=1, retrain_every=0)
print(p.pk)
""")
        pid = int(probe.strip().splitlines()[-1])
        with tempfile.TemporaryDirectory(prefix="bench-reviewers-") as tmp:
            path = Path(tmp) / f"trajectories-{steps}.jsonl"
            t = time.perf_counter()
            items, written = write_trajectories(path, steps)
            log(f"  generated {items:,} trajectories ({written:,} steps, {path.stat().st_size / 2**20:.0f} MiB) "
                f"in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            manage(env, "import_items", str(pid), str(path), "-v0")
            log(f"  imported in {time.perf_counter() - t:.1f} s (load average {loadavg()})")
        _run_py(env, "from django.db import connection\nconnection.cursor().execute('VACUUM ANALYZE')")
        info = _probe(env, steps)
        if info is None:
            raise SystemExit("the import did not leave a usable project")
        info["cached"] = False
    return db_name, info


def _run_py(env: dict, code: str) -> str:
    prog = "import django; django.setup()\n" + code
    proc = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit("a setup step failed")
    return proc.stdout


def _probe(env: dict, steps: int) -> dict | None:
    out = _run_py(env, f"""
import json
from django.db.models import Sum
from annotation.models import ImportJob, Item, Project
p = Project.objects.filter(name={project_name(steps)!r}).first()
ok = p is not None and ImportJob.objects.filter(project=p, status=ImportJob.Status.SUCCEEDED).exists()
agg = Item.objects.filter(project=p).aggregate(n=Sum("step_count")) if ok else {{}}
print("PROBE " + json.dumps({{"project": p.pk, "items": Item.objects.filter(project=p).count(),
                             "steps": agg["n"]}} if ok else None))
""")
    line = next((x for x in out.splitlines() if x.startswith("PROBE ")), "PROBE null")
    return json.loads(line[6:])


def reset_project(project_id: int, *, answers_per_item: int, lease_minutes: int = 30):
    """Back to a fresh queue: no answers, leases, skips, finals or audit events; every item open.
    Bench setup in SQL (not a product path), then VACUUM ANALYZE so plans start from fresh statistics."""
    from django.db import connection

    from annotation.models import Answer, AuditEvent, Final, Item, Lease, Project, Skip

    it = Item._meta.db_table
    with connection.cursor() as cur:
        for model in (Answer, Lease, Skip, Final):
            cur.execute(f"DELETE FROM {model._meta.db_table} WHERE item_id IN "
                        f"(SELECT id FROM {it} WHERE project_id = %s)", [project_id])
        cur.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE project_id = %s", [project_id])
        cur.execute(f"UPDATE {it} SET answer_count = 0, state = 'open' "
                    f"WHERE project_id = %s AND (answer_count <> 0 OR state <> 'open')", [project_id])
        Project.objects.filter(pk=project_id).update(answers_per_item=answers_per_item, lease_minutes=lease_minutes,
                                                     retrain_every=0)
        for model in (Answer, Lease, Final, AuditEvent, Item):
            cur.execute(f"VACUUM ANALYZE {model._meta.db_table}")


def make_reviewers(project_id: int, k: int, prefix: str = "bench-reviewer") -> list[tuple[str, str]]:
    """K annotators of the project, each with an API token: [(username, token)]."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from annotation.models import Membership, Project, Role

    User = get_user_model()
    project = Project.objects.get(pk=project_id)
    out = []
    for i in range(k):
        user, created = User.objects.get_or_create(username=f"{prefix}-{i:03d}")
        if created:
            user.set_unusable_password()
            user.save()
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": Role.ANNOTATOR})
        token, _ = Token.objects.get_or_create(user=user)
        out.append((user.username, token.key))
    return out


# --- the server ---------------------------------------------------------------------------------------


class Server:
    """`manage.py serve` as production runs it, on a free port, in its own process group."""

    def __init__(self, db_name: str, *, web_processes: int = 1, workers: int = 1, port: int | None = None,
                 extra: tuple[str, ...] = ()):
        self.db_name = db_name
        self.port = port or free_port()
        self.web_processes = web_processes
        self.workers = workers
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"{db_name}-serve-{self.port}.log"

    @property
    def description(self) -> str:
        return (f"manage.py serve --port {self.port} --workers {self.workers} --web-processes {self.web_processes}"
                + (" " + " ".join(self.extra) if self.extra else ""))

    def start(self, timeout=60.0):
        env = server_env(self.db_name)
        static = ROOT / "staticfiles"
        if not static.exists():
            manage(env, "collectstatic", "--noinput", "-v0")
        cmd = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), "--web-processes", str(self.web_processes), *self.extra]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log_path}:\n"
                                 + self.log_path.read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    # a static file, served by WhiteNoise as in production
                    s.sendall(b"GET /static/annotation/app.css HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Connection: close\r\n\r\n")
                    head = s.recv(64)
                    if head.startswith(b"HTTP/1.1"):
                        if not head.startswith(b"HTTP/1.1 200"):
                            status_line = head.split(b"\r\n")[0].decode(errors="replace")
                            print(f"warning: a static file answered {status_line}")
                        time.sleep(1.0 if self.web_processes > 1 else 0.2)  # let the other web processes start
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"the server did not answer within {timeout:.0f} s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server's process group: serve, its web processes and db_workers."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid:
                    out.append(int(d.name))
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's processes so far (PostgreSQL's not included)."""
        total = 0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / tick

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # anything left in the group (a worker mid-restart)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None
        self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def postgres_cpu(db_name: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to `db_name` (pid -> seconds). With
    the connection pool they live as long as the server, so deltas over a run are meaningful."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f" {db_name} " not in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, stolen) CPU seconds of the whole machine so far, from /proc/stat. Stolen: time this
    virtual machine's CPUs were ready to run but the host ran something else (counted in busy too)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick, fields[7] / tick


def stolen_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """% of the machine's CPU time between two machine_cpu() readings that the host took."""
    return 100 * (after[2] - before[2]) / max(1e-9, after[1] - before[1])


# --- the client ---------------------------------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port = host, port
        self.auth = f"Token {token}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def _connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.connects += 1

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:  # noqa: BLE001
                pass
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0):
        """(status, body bytes). Raises HttpError (or OSError/TimeoutError) when no response came."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: {self.auth}\r\n"
                f"Accept: application/json\r\n")
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        else:
            head += "Content-Length: 0\r\n"
        data = head.encode() + b"\r\n" + (body or b"")
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self._connect()
            try:
                self.writer.write(data)
                return await asyncio.wait_for(self._response(), timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                # a kept-alive connection the server had closed: send once more on a new one
                if fresh or attempt:
                    raise HttpError(f"connection: {type(exc).__name__}") from None
            except BaseException:
                await self.close()
                raise
        raise HttpError("unreachable")

    async def _response(self):
        line = await self.reader.readuntil(b"\r\n")
        parts = line.split(b" ", 2)
        status = int(parts[1])
        length, chunked, close = None, False, False
        while True:
            h = await self.reader.readuntil(b"\r\n")
            if h == b"\r\n":
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            out = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                out += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            body = bytes(out)
        elif length is not None:
            body = await self.reader.readexactly(length)
        elif status in (204, 304) or status < 200:
            body = b""
        else:
            body = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, body


def error_kind(what: str, status: int, body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail", "")
    except Exception:  # noqa: BLE001
        detail = body[:80].decode(errors="replace")
    return f"{what} {status}: {str(detail)[:90]}"


# --- statistics ---------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def pcts(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    return percentile(v, 0.50), percentile(v, 0.95), percentile(v, 0.99)


def ms(x: float) -> str:
    return "–" if x != x else (f"{x * 1000:.0f}" if x >= 0.1 else f"{x * 1000:.1f}")
