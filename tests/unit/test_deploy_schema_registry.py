"""The schema registry's command line, fetch, compatibility call and place in ``up``/``status``
(no registry started here: tests/integration/test_schema_registry_process.py runs one)."""

from __future__ import annotations

import io
import json
import stat
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from clawstream.config import Settings
from clawstream.deploy.local import schema_registry, stack
from clawstream.deploy.local.errors import FetchError, MissingToolError
from clawstream.deploy.local.maven import DEPENDENCY_PLUGIN, artifact_command
from clawstream.deploy.local.ports import free_port
from clawstream.deploy.local.process import ProcessInfo

VERSION = "2.6.13.Final"


def test_command_line(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, schema_registry_port=38585,
                        schema_registry_heap="200m")
    jar = Path("/cache/app/apicurio-registry-app-2.6.13.Final-runner.jar")
    cmd = schema_registry.command(settings, "/usr/bin/java", jar)
    assert cmd[0] == "/usr/bin/java"
    assert cmd[-2:] == ["-jar", str(jar)]
    for flag in ("-Xms64m", "-Xmx200m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Dquarkus.http.host=127.0.0.1", "-Dquarkus.http.port=38585",
                 "-Dregistry.ccompat.use-canonical-hash=true"):
        assert flag in cmd
    # H2 in a file of the state dir (ids survive restarts), each commit written through.
    db = tmp_path / "registry" / "registry"
    assert f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{db};WRITE_DELAY=0" in cmd
    assert f"-Djava.io.tmpdir={tmp_path / 'registry' / 'tmp'}" in cmd


def test_url_is_the_confluent_compatible_api() -> None:
    settings = Settings(schema_registry_port=38586)
    assert settings.schema_registry_url == "http://127.0.0.1:38586/apis/ccompat/v7"
    defaults = Settings.model_fields  # the tests' environment moves the port
    assert defaults["schema_registry_port"].default == 8085
    assert defaults["schema_registry_enabled"].default is True


def test_the_app_is_one_artifact_fetched_without_a_pom() -> None:
    assert schema_registry.coordinates(VERSION) == (
        "io.apicurio:apicurio-registry-app:2.6.13.Final:tar.gz:all")
    cmd = artifact_command("mvn", schema_registry.coordinates(VERSION), Path("/out"))
    assert cmd[:3] == ["mvn", "-q", "-B"]
    assert f"{DEPENDENCY_PLUGIN}:copy" in cmd
    assert "-DoutputDirectory=/out" in cmd
    assert "-f" not in cmd


FAKE_MVN = """#!{python}
import shutil, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-D"))
if "{fail}":
    print("[ERROR] Could not find artifact " + args["artifact"])
    sys.exit(1)
out = Path(args["outputDirectory"])
out.mkdir(parents=True)
shutil.copy("{archive}", out / "app-all.tar.gz")
"""


def _fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> None:
    """An ``mvn`` on PATH that "fetches" a tiny tar.gz laid out like the real one."""
    archive = tmp_path / "app.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in (f"apicurio-registry-app-{VERSION}-runner.jar", "lib/a.jar"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"PK"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN.format(python=sys.executable, archive=archive,
                                   fail="yes" if fail else ""))
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_fetch_unpacks_into_the_cache_outside_the_state_dir_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mvn(tmp_path, monkeypatch, fail=False)
    app = tmp_path / "xdg" / "clawstream" / f"apicurio-registry-{VERSION}" / "app"
    assert schema_registry.app_dir(VERSION) == app
    assert not schema_registry.app_present(VERSION)
    jar = schema_registry.ensure_app(VERSION)
    assert jar == app / f"apicurio-registry-app-{VERSION}-runner.jar" and jar.is_file()
    assert (app / "lib" / "a.jar").is_file() and not (app / ".download").exists()
    assert sorted(p.name for p in app.parent.iterdir()) == [".lock", "app"]  # no leftovers
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # cached: no maven run
    assert schema_registry.ensure_app(VERSION) == jar


def test_a_failed_fetch_names_the_artifact_and_what_to_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mvn(tmp_path, monkeypatch, fail=True)
    with pytest.raises(FetchError) as err:
        schema_registry.ensure_app(VERSION)
    message = str(err.value)
    assert schema_registry.coordinates(VERSION) in message
    assert "Maven Central" in message and "Could not find artifact" in message
    assert not schema_registry.app_dir(VERSION).exists()
    assert [p.name for p in schema_registry.app_dir(VERSION).parent.iterdir()] == [".lock"]


def test_missing_java_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingToolError, match="openjdk-17"):
        schema_registry.start(Settings(state_dir=tmp_path, schema_registry_port=free_port()))


class _FakeRegistry(BaseHTTPRequestHandler):
    """The ccompat ``/config`` resource: GET reads the level, PUT sets it."""

    level: ClassVar[str] = "NONE"
    puts: ClassVar[list[Any]] = []

    def do_GET(self) -> None:
        self._answer({"compatibilityLevel": type(self).level})

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).puts.append(body)
        type(self).level = body["compatibility"]
        self._answer(body)

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def fake_registry() -> Iterator[Settings]:
    _FakeRegistry.level, _FakeRegistry.puts = "NONE", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Settings(schema_registry_port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_compatibility_is_set_to_backward_once(fake_registry: Settings) -> None:
    assert schema_registry.ensure_compatibility(fake_registry) == "NONE"
    assert _FakeRegistry.puts == [{"compatibility": "BACKWARD"}]
    assert schema_registry.ensure_compatibility(fake_registry) is None  # already: only read
    assert _FakeRegistry.puts == [{"compatibility": "BACKWARD"}]


def _up_without_services(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``up`` with every component's start replaced; the names of those started."""
    started: list[str] = []

    def fake(name: str) -> Any:
        def start(_settings: Settings, **_: Any) -> ProcessInfo:
            started.append(name)
            return ProcessInfo(name, 1, True, Path("/dev/null"))
        return start

    for name, module in (("redis", stack.redis), ("kafka", stack.kafka),
                         ("registry", stack.schema_registry)):
        monkeypatch.setattr(module, "start", fake(name))
    monkeypatch.setattr(stack, "_topics_step", lambda *_: None)
    monkeypatch.setattr(stack, "_schemas_step", lambda *_: None)
    stack.up(settings, with_workers=False, with_inference=False)
    return started


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", redis_port=free_port(),
                    kafka_port=free_port(), schema_registry_port=free_port(),
                    prometheus_enabled=False)


def test_up_starts_the_registry_and_status_shows_it(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sorted(_up_without_services(settings, monkeypatch)) == ["kafka", "redis", "registry"]
    row = {r.name: r for r in stack.status(settings)}["registry"]
    assert row.address == settings.schema_registry_url and row.detail == "stopped"


def test_a_disabled_registry_is_not_started_nor_shown(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    off = settings.model_copy(update={"schema_registry_enabled": False})
    assert sorted(_up_without_services(off, monkeypatch)) == ["kafka", "redis"]
    assert "registry" not in [r.name for r in stack.status(off)]
