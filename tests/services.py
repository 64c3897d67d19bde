"""Real backing services for the test suite: Mosquitto, InfluxDB 1.x and a v2-API adapter.

Plain classes (no pytest imports) so they can be used from fixtures, benchmarks and
interactive sessions alike. Every server binds to a free loopback port and keeps all of
its state (config, persistence, logs) under the given working directory.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = [
    "InfluxDB1",
    "InfluxStack",
    "InfluxV2Adapter",
    "Mosquitto",
    "PostgreSQL",
    "ServiceError",
    "find_influxd",
    "find_mosquitto",
    "find_postgres",
    "free_port",
]


class ServiceError(RuntimeError):
    """A test service failed to start, stop or answer."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_ports(1)[0]


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; else 32768)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_ports(n: int) -> list[int]:
    # Ports below the ephemeral range: a port the kernel picks for bind(0) comes from the
    # range it also gives every outgoing connection (to Mosquitto, InfluxDB, PostgreSQL),
    # and one of those could take it before the service under test binds it. Hold all
    # sockets open until every port is chosen, so the ports are distinct.
    low = _ephemeral_low()
    pool = range(max(1024, low - 12_000), low) if low > 2048 else range(0)
    rng = random.Random()
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", rng.choice(pool) if pool else 0))
            except OSError:
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _which(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


def find_mosquitto() -> str | None:
    return _which("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_influxd() -> str | None:
    return _which("influxd", "/usr/bin/influxd", "/usr/local/bin/influxd")


def find_postgres() -> str | None:
    """The directory of Debian's PostgreSQL server binaries (initdb, postgres, pg_ctl),
    which are not on PATH there: /usr/lib/postgresql/<version>/bin, newest version."""
    found = shutil.which("initdb")
    if found:
        return str(Path(found).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return str(versions[-1].parent) if versions else None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no {path.name}>"
    return "\n".join(text.splitlines()[-lines:])


class _Process:
    """A child server process with its stdout/stderr going to a file."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.output = workdir / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, argv: list[str]) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C in the terminal does not hit the server
            )

    def wait_ready(self, ready: Callable[[], bool], timeout: float, logs: list[Path]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.proc.returncode} during startup\n"
                    + self.log_tail(logs)
                )
            if ready():
                return
            if time.monotonic() > deadline:
                self.terminate()
                raise ServiceError(
                    f"{self.name} not ready after {timeout:.0f}s\n" + self.log_tail(logs)
                )
            time.sleep(0.02)

    def log_tail(self, logs: list[Path]) -> str:
        parts = [f"--- {p} ---\n{_tail(p)}" for p in [self.output, *logs] if p.exists()]
        return "\n".join(parts)

    def terminate(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:<free port> with on-disk persistence.

    Queued QoS 1/2 messages and subscriptions of persistent sessions survive ``restart()``:
    mosquitto writes its persistence db on SIGTERM, and ``autosave_interval 1`` also saves
    it every second while it runs (which covers a crash/SIGKILL, up to the last second).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        require_certificate: bool = False,
    ) -> None:
        """`tls` = (CA, server certificate, server key): the listener speaks only TLS;
        with `password_file` anonymous clients are refused; `acl_file` limits topics."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.tls = tls
        self.password_file = password_file
        self.acl_file = acl_file
        self.require_certificate = require_certificate
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.persistence_dir = self.workdir / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self._proc = _Process("mosquitto", self.workdir)
        self._started_once = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc.running

    def _access_lines(self) -> list[str]:
        lines = []
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            lines.append(f"require_certificate {str(self.require_certificate).lower()}")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return lines

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            *self._access_lines(),
            "persistence true",
            f"persistence_location {self.persistence_dir}",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "max_inflight_messages 1000",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_packet_size 268435455",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto would switch to user "mosquitto", which cannot
            # write to a private tmp dir; stay root (test-only, loopback-only broker).
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        binary = find_mosquitto()
        if binary is None:
            raise ServiceError("mosquitto binary not found (apt-get install mosquitto)")
        attempts = 1 if (self._fixed_port or self._started_once) else 3
        for attempt in range(attempts):
            self._write_conf()
            self._proc.spawn([binary, "-c", str(self.conf)])
            try:
                self._proc.wait_ready(lambda: _port_open(self.host, self.port), timeout, [self.log])
            except ServiceError:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()  # lost a race for the port: try another one
                continue
            break
        self._started_once = True

    def stop(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        """SIGKILL: no final persistence save (only what autosave already wrote)."""
        proc, self._proc.proc = self._proc.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is read or acknowledged until resume()."""
        assert self._proc.proc is not None
        self._proc.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc.proc is not None
        self._proc.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


class InfluxDB1:
    """An InfluxDB 1.x server (``influxd run``) on free loopback ports, without auth."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.http_port, self.rpc_port = _free_ports(2)
        self.conf = self.workdir / "influxdb.conf"
        self._proc = _Process("influxd", self.workdir)
        self._started_once = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._proc.running

    def _write_conf(self) -> None:
        d = self.workdir
        self.conf.write_text(
            f"""\
reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.http_port}"
  auth-enabled = false
  log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                return bool(resp.status == 204)
        except (OSError, http.client.HTTPException):
            return False

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        binary = find_influxd()
        if binary is None:
            raise ServiceError("influxd binary not found (apt-get install influxdb)")
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            self._write_conf()
            self._proc.spawn([binary, "run", "-config", str(self.conf)])
            try:
                self._proc.wait_ready(self.ping, timeout, [])
            except ServiceError:
                if attempt + 1 == attempts:
                    raise
                self._proc.terminate()
                self.http_port, self.rpc_port = _free_ports(2)
                continue
            break
        self._started_once = True

    def stop(self) -> None:
        self._proc.terminate(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self._proc.output, lines)

    def _request(self, method: str, params: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(params)
        if method == "GET":
            req = urllib.request.Request(f"{self.url}/query?{data}")
        else:
            req = urllib.request.Request(
                f"{self.url}/query",
                data=data.encode(),
                method="POST",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as e:
            raise ServiceError(f"InfluxDB {e.code}: {e.read().decode(errors='replace')}") from e
        if "error" in body:
            raise ServiceError(f"InfluxDB error: {body['error']}")
        for result in body.get("results", []):
            if "error" in result:
                raise ServiceError(f"InfluxDB statement error: {result['error']}")
        return body

    def create_database(self, name: str) -> None:
        self._request("POST", {"q": f'CREATE DATABASE "{name}"'})

    def query(self, q: str, db: str | None = None, *, epoch: str | None = "ms") -> dict[str, Any]:
        """Run an InfluxQL query (GET /query); times are epoch ms unless ``epoch`` says
        otherwise (``None`` → RFC 3339 strings). Raises ServiceError on any error."""
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        return self._request("GET", params)


class PostgreSQL:
    """A PostgreSQL server on 127.0.0.1:<free port>, its cluster in a private directory.

    initdb and the server refuse to run as root; as root (CI), both run as an
    unprivileged user (`nobody` unless given) that owns the cluster directory, which is
    therefore made outside pytest's private tmp tree. Tuned for tests, not for keeping
    data through a power cut (fsync off), which a test never needs.

        pg = PostgreSQL(); pg.start(); url = pg.create_database("t1"); ...; pg.stop()
    """

    def __init__(self, *, user: str = "nobody", port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._root = Path(tempfile.mkdtemp(prefix="monitor-pg-"))
        self.data = self._root / "data"
        self.log = self._root / "postgres.log"
        self._run_as = user if os.geteuid() == 0 else None
        self._proc = _Process("postgres", self._root)
        self._initialised = False

    @property
    def running(self) -> bool:
        return self._proc.running

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _bin(self, name: str) -> str:
        where = find_postgres()
        if where is None:
            raise ServiceError("PostgreSQL server binaries not found (apt-get install postgresql)")
        return str(Path(where) / name)

    def _own(self) -> dict[str, Any]:
        """Popen arguments that run a child as the unprivileged user (when we are root)."""
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": self._run_as_group(), "extra_groups": []}

    def _run_as_group(self) -> int:
        import pwd

        return pwd.getpwnam(self._run_as or "").pw_gid

    def _initdb(self) -> None:
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(self._root, entry.pw_uid, entry.pw_gid)
        argv = [self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
        argv += ["-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=self._root, check=False, **self._own()
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        self._initialised = True

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        if not self._initialised:
            self._initdb()
        argv = [self._bin("postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-h", self.host, "-k", "", "-c", "fsync=off", "-c", "full_page_writes=off"]
        argv += ["-c", "synchronous_commit=off", "-c", "max_connections=200"]
        argv += ["-c", "log_destination=stderr", "-c", "logging_collector=off"]
        with self.log.open("ab") as out:
            self._proc.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._root,
                start_new_session=True,
                **self._own(),
            )
        self._proc.output = self.log
        self._proc.wait_ready(self._ready, timeout, [])

    def _ready(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        done = subprocess.run(
            [self._bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (autocommit); its output, or ServiceError."""
        where = ["-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", database]
        done = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *where, "-c", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients disconnected, no waiting for them)."""
        proc, self._proc.proc = self._proc.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the cluster directory."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


_PRECISION_V2_TO_V1 = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Content-Encoding", "Accept")
_FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "X-Influxdb-Version",
    "X-Influxdb-Build",
    "Request-Id",
    "X-Influxdb-Error",
)


class InfluxV2Adapter:
    """The thinnest adapter that lets the InfluxDB v2 client talk to InfluxDB 1.6.

    It does what InfluxDB 1.8 itself does for the 2.x compatibility API:

    * ``POST /api/v2/write?org=&bucket=DB/RP&precision=ns|us|ms|s`` is forwarded as
      ``POST /write?db=DB&rp=RP&precision=n|u|ms|s`` (a bucket without ``/`` omits ``rp``).
      The body is forwarded byte for byte with its ``Content-Type`` and ``Content-Encoding``
      (1.x accepts gzip), and the upstream's status and body are returned unchanged.
      ``org`` is ignored, as in 1.8.
    * ``GET|POST /query`` and ``GET /ping`` pass through unchanged (query string and body).
    * ``GET /health`` answers 200 ``{"status": "pass", ...}`` when upstream ``/ping``
      answers, else 503.
    * Anything else is 404. An unreachable upstream gives 503 with a JSON message.

    Auth: an ``Authorization: Token ...`` header is accepted and ignored (not forwarded),
    because the InfluxDB 1.6 used in the tests runs without authentication. The adapter
    therefore does NOT check tokens; it is a test/bench tool, never for production.

    No line-protocol rewriting and no buffering beyond one request/response at a time.
    Request bodies must carry ``Content-Length`` (chunked uploads get 411).
    """

    def __init__(self, upstream_url: str, *, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._upstream = (parsed.hostname, parsed.port or 8086)
        self.timeout = timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer((self.host, self.port), self._handler_class())
        server.daemon_threads = True
        self.port = server.server_address[1]  # keeps the port across stop()/start()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"influx-v2-adapter:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def upstream(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to upstream; raises OSError/HTTPException when unreachable."""
        conn = http.client.HTTPConnection(*self._upstream, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        adapter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive for the client's connection pool
            server_version = "influx-v2-adapter"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet; pytest would show it as noise

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def do_PATCH(self) -> None:
                self._dispatch("PATCH")

            def _dispatch(self, method: str) -> None:
                split = urllib.parse.urlsplit(self.path)
                path = split.path.rstrip("/") or "/"
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    self.close_connection = True
                    self._json(411, {"code": "invalid", "message": "Content-Length required"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                try:
                    if path == "/api/v2/write" and method == "POST":
                        self._write(split.query, body)
                    elif path == "/query" and method in ("GET", "POST"):
                        self._forward(method, self.path, body)
                    elif path == "/ping" and method in ("GET", "HEAD"):
                        self._forward(method, self.path, None)
                    elif path == "/health" and method == "GET":
                        self._health()
                    else:
                        self._json(404, {"code": "not found", "message": f"{method} {path}"})
                except (OSError, http.client.HTTPException) as e:
                    self._json(
                        503,
                        {
                            "code": "unavailable",
                            "message": f"InfluxDB at {adapter.upstream_url} unreachable: {e}",
                        },
                    )

            def _write(self, query: str, body: bytes | None) -> None:
                params = urllib.parse.parse_qs(query)
                bucket = params.get("bucket", [""])[0]
                precision = params.get("precision", ["ns"])[0]
                if not bucket:
                    self._json(400, {"code": "invalid", "message": "bucket is required"})
                    return
                if precision not in _PRECISION_V2_TO_V1:
                    self._json(
                        400, {"code": "invalid", "message": f"invalid precision {precision!r}"}
                    )
                    return
                db, _, rp = bucket.partition("/")
                v1 = {"db": db, "precision": _PRECISION_V2_TO_V1[precision]}
                if rp:
                    v1["rp"] = rp
                self._forward("POST", "/write?" + urllib.parse.urlencode(v1), body)

            def _forward(self, method: str, path: str, body: bytes | None) -> None:
                headers = {k: v for k in _FORWARDED_REQUEST_HEADERS if (v := self.headers.get(k))}
                status, resp_headers, data = adapter.upstream(method, path, body, headers)
                self.send_response(status)
                for k, v in resp_headers:
                    if k.title() in _FORWARDED_RESPONSE_HEADERS:
                        self.send_header(k, v)
                self._finish(status, data)

            def _health(self) -> None:
                try:
                    status, _, _ = adapter.upstream("GET", "/ping", None, {})
                    ok = status == 204
                    detail = f"upstream /ping answered {status}"
                except (OSError, http.client.HTTPException) as e:
                    ok, detail = False, f"upstream unreachable: {e}"
                self._json(
                    200 if ok else 503,
                    {
                        "name": "influxdb",
                        "status": "pass" if ok else "fail",
                        "message": "ready for queries and writes" if ok else detail,
                    },
                )

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self._finish(status, json.dumps(payload).encode())

            def _finish(self, status: int, data: bytes) -> None:
                if status not in (204, 304) and not 100 <= status < 200:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data and self.command != "HEAD" and status not in (204, 304):
                    self.wfile.write(data)

        return Handler

    def __enter__(self) -> InfluxV2Adapter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class InfluxStack:
    """What the ``influxdb`` fixture yields: a 1.x server, the v2 adapter in front of it,
    and the v2-client settings the service under test is configured with."""

    server: InfluxDB1
    adapter: InfluxV2Adapter
    org: str = "monitor"
    bucket: str = "meters/autogen"
    token: str = "test-token"
    db: str = "meters"

    @property
    def url(self) -> str:
        """The adapter URL: what the service's InfluxDB v2 client is configured with."""
        return self.adapter.url

    def query(self, q: str, *, epoch: str | None = "ms") -> dict[str, Any]:
        """InfluxQL against the ``meters`` database, directly on the 1.x server."""
        return self.server.query(q, self.db, epoch=epoch)

    def rows(self, q: str) -> list[dict[str, Any]]:
        """Rows of all series of the first statement of ``q`` as dicts (tags merged in,
        ``time`` in epoch ms); [] when nothing matched."""
        result = self.query(q)["results"][0]
        out: list[dict[str, Any]] = []
        for series in result.get("series", []):
            tags = series.get("tags", {})
            cols = series["columns"]
            out.extend({**tags, **dict(zip(cols, v, strict=True))} for v in series["values"])
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.adapter.stop()
        self.server.stop()
