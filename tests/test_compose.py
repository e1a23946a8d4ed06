"""docker-compose.yml: valid, free of secrets, and in step with the local run.

No Docker engine is needed: Debian's ``docker-compose`` (1.29) validates and resolves
the file offline with ``docker-compose config``. What "the local run uses" is not
written down twice here; it is read from the code itself:

- commands: the arguments ``bulkshift.stack`` starts Label Studio, the ML backend and
  its worker with (captured from a fake ``subprocess.Popen``), and the argument parser
  of each service's ``main`` (captured before it parses anything);
- environment: the variable names the services' settings readers look up (recorded
  while they run), plus those named in ``os.environ`` look-ups in their source, plus
  the Label Studio environment ``LabelStudioServer`` sets.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
HEALTHCHECK = REPOSITORY / "docker" / "healthcheck.py"
DOCKER_COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose); "
    "it validates docker-compose.yml without a Docker engine",
)

# The secrets .env must provide; dummy values, so the file resolves here.
SECRETS = {
    "LABEL_STUDIO_USERNAME": "admin@example.org",
    "LABEL_STUDIO_PASSWORD": "dummy-password",
    "LABEL_STUDIO_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "BULKSHIFT_WEBHOOK_SECRET": "dummy-webhook-secret",
    "POSTGRES_PASSWORD": "dummy-postgres-password",
}
# Variables a container may also hold that no settings reader of ours looks up.
PROCESS_VARIABLES = {"HOME", "PATH", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONPATH"}

PYTHON_SERVICES = {
    "ml-backend": "ml_backend",
    "ml-backend-worker": "ml_backend.worker",
    "bulk-shift": "bulk_shift_plugin",
}
SERVICES = {"postgres", "redis", "label-studio", *PYTHON_SERVICES}


# -- running docker-compose ----------------------------------------------------------


def run_compose_config(env_file: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``docker-compose config`` with only ``env_file`` as the source of variables.

    The caller's environment is left out on purpose: a REDIS_URL exported by the test
    script must not change what the file resolves to.
    """
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(env_file.parent),
    }
    return subprocess.run(
        [
            DOCKER_COMPOSE,
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            *arguments,
        ],
        check=False,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        cwd=env_file.parent,
    )


def write_env_file(path: Path, variables: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    return path


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The compose file as ``docker-compose config`` resolves it with dummy secrets."""
    env_file = write_env_file(tmp_path_factory.mktemp("compose") / ".env", SECRETS)
    completed = run_compose_config(env_file)
    assert completed.returncode == 0, (
        f"docker-compose config rejected {COMPOSE_FILE}:\n{completed.stderr}"
    )
    return yaml.safe_load(completed.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    """The compose file as written (anchors merged, variables not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def environment_of(config: dict, service: str) -> dict[str, str]:
    environment = config["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {
        name: "" if value is None else str(value) for name, value in environment.items()
    }


def module_and_arguments(command: list[str]) -> tuple[str, list[str]]:
    """``["python", "-m", M, *rest]`` → ``(M, rest)``."""
    assert command[:2] == ["python", "-m"], f"expected python -m MODULE, got {command}"
    return command[2], command[3:]


def container_ports(config: dict, service: str) -> list[int]:
    """Container ports of ``ports``: ``"HOST_IP:HOST_PORT:PORT/tcp"`` or long form."""
    return [
        entry["target"]
        if isinstance(entry, dict)
        else int(str(entry).rsplit(":", 1)[-1].split("/")[0])
        for entry in config["services"][service].get("ports", [])
    ]


def option_names(arguments: list[str]) -> set[str]:
    return {argument for argument in arguments if argument.startswith("--")}


# -- what the local run uses, read from the code -------------------------------------


class RecordingEnviron(dict):
    """A stand-in for ``os.environ`` that remembers every name looked up."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looked_up: set[str] = set()

    def get(self, name, default=None):
        self.looked_up.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.looked_up.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.looked_up.add(name)
        return super().__contains__(name)


def names_looked_up(monkeypatch, environment: dict[str, str], *readers) -> set[str]:
    """Run each reader with ``environment`` as ``os.environ``; return the names read."""
    recording = RecordingEnviron(environment)
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", recording)
        for reader in readers:
            reader()
    return recording.looked_up - PROCESS_VARIABLES


def names_in_source(*paths: Path) -> set[str]:
    """Names in ``os.environ.get("X")``, ``os.environ["X"]``, ``os.getenv("X")``.

    Module-level string constants (``WEIGHTS_ENV = "…"``) are resolved.
    """
    names = set()
    files = [
        file
        for path in paths
        for file in ([path] if path.is_file() else sorted(path.rglob("*.py")))
    ]
    for file in files:
        tree = ast.parse(file.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }

        def literal(node, constants=constants):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            if isinstance(node, ast.Name):
                return constants.get(node.id)
            return None

        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                function = ast.unparse(node.func)
                if function.endswith("environ.get") or function == "os.getenv":
                    names.add(literal(node.args[0]))
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith(
                "environ"
            ):
                names.add(literal(node.slice))
    return names - {None} - PROCESS_VARIABLES


def backend_variables(monkeypatch) -> tuple[set[str], set[str]]:
    """(names the backend's readers look up, names its source may look up)."""
    from bulkshift import store
    from bulkshift.features import extractors
    from ml_backend.config import Settings

    def weights():
        try:
            extractors.resolve_vgg16_weights("default")
        except extractors.WeightsUnavailableError:
            pass

    # REDIS_URL is set so that store.redis_url() does not start an embedded Redis.
    read = names_looked_up(
        monkeypatch,
        {"REDIS_URL": "redis://127.0.0.1:1/0"},
        Settings.from_environment,
        store.redis_url,
        store.data_dir,
        weights,
    )
    source = names_in_source(
        REPOSITORY / "ml_backend",
        REPOSITORY / "bulkshift" / "features",
        REPOSITORY / "bulkshift" / "store.py",
    )
    return read, read | source


def plugin_variables(monkeypatch) -> tuple[set[str], set[str]]:
    from bulk_shift_plugin.config import Settings

    read = names_looked_up(
        monkeypatch,
        {"LABEL_STUDIO_API_KEY": "dummy", "BULKSHIFT_WEBHOOK_SECRET": "dummy"},
        Settings.from_environment,
    )
    source = names_in_source(
        REPOSITORY / "bulk_shift_plugin", REPOSITORY / "bulkshift" / "store.py"
    )
    return read, read | source


def parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser a service's ``main`` builds, caught before it parses anything."""

    class Caught(Exception):
        pass

    caught = {}

    def catch(parser, *args, **kwargs):
        caught["parser"] = parser
        raise Caught

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(Caught):
            main([])
    return caught["parser"]


def parse_with(parser: argparse.ArgumentParser, arguments: list[str]):
    try:
        return parser.parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{parser.prog} rejects the compose arguments {arguments}")


class FakePopen:
    """Records the command and environment instead of starting a process."""

    calls: ClassVar[list[tuple[list[str], dict]]] = []

    def __init__(self, command, **options):
        FakePopen.calls.append((list(command), options.get("env") or {}))
        self.pid = 0
        self.returncode = 1

    def poll(self):
        # "Exited at once": the starters stop waiting and never signal anything.
        return 1

    def wait(self, timeout=None):
        return 1


def stack_command(monkeypatch, start) -> tuple[list[str], dict]:
    """The command and environment ``start()`` would launch a service with."""
    from bulkshift.stack.processes import StackError

    FakePopen.calls = []
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", FakePopen)
        try:
            start()
        except StackError:
            pass  # the fake process "exited"; its command was recorded
    assert len(FakePopen.calls) == 1, f"expected one process, got {FakePopen.calls}"
    return FakePopen.calls[0]


# -- the file itself ----------------------------------------------------------------


def test_docker_compose_runs_without_an_engine():
    completed = subprocess.run(
        [DOCKER_COMPOSE, "version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def test_the_file_resolves_to_the_six_services(resolved):
    assert set(resolved["services"]) == SERVICES
    assert set(resolved["volumes"]) == {
        "postgres-data",
        "redis-data",
        "label-studio-data",
        "bulk-shift-data",
    }


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_a_missing_secret_stops_compose_and_is_named(tmp_path, secret):
    others = {name: value for name, value in SECRETS.items() if name != secret}
    completed = run_compose_config(write_env_file(tmp_path / ".env", others))

    assert completed.returncode != 0
    assert secret in completed.stderr


def test_secrets_are_only_ever_interpolated_never_written(raw):
    secret_names = set(SECRETS) | {
        "LABEL_STUDIO_USER_TOKEN",
        "POSTGRE_PASSWORD",
        "BASIC_AUTH_USER",
        "BASIC_AUTH_PASS",
    }
    for service, config in raw["services"].items():
        for name, value in (config.get("environment") or {}).items():
            if name in secret_names:
                assert str(value).startswith("${"), (
                    f"{service}: {name} must come from .env, not the file"
                )
    for secret in SECRETS.values():
        assert secret not in COMPOSE_FILE.read_text()


def test_every_service_has_a_healthcheck_and_a_restart_policy(resolved):
    for name, service in resolved["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_label_studio_and_postgres_agree_on_the_database(resolved):
    postgres = environment_of(resolved, "postgres")
    label_studio = environment_of(resolved, "label-studio")

    assert label_studio["POSTGRE_NAME"] == postgres["POSTGRES_DB"]
    assert label_studio["POSTGRE_USER"] == postgres["POSTGRES_USER"]
    assert label_studio["POSTGRE_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert label_studio["POSTGRE_HOST"] == "postgres"
    # Label Studio's own default, "default", means its PostgreSQL settings.
    assert label_studio["DJANGO_DB"] == "default"


def test_the_services_share_one_api_key_and_one_redis(resolved):
    token = environment_of(resolved, "label-studio")["LABEL_STUDIO_USER_TOKEN"]
    for service in PYTHON_SERVICES:
        environment = environment_of(resolved, service)
        assert environment["LABEL_STUDIO_API_KEY"] == token, service
        assert environment["REDIS_URL"] == "redis://redis:6379/0", service
        assert environment["LABEL_STUDIO_URL"] == "http://label-studio:8080", service


# -- commands ------------------------------------------------------------------------


def test_backend_command_is_the_stacks_with_the_same_options(
    resolved, tmp_path, monkeypatch
):
    from bulkshift.stack.backend import BackendServer, BackendWorker

    server_command, _ = stack_command(
        monkeypatch, BackendServer(tmp_path / "backend.log", {}).start
    )
    worker_command, _ = stack_command(
        monkeypatch, BackendWorker(tmp_path / "worker.log", {}).start
    )

    for service, stack in (
        ("ml-backend", server_command),
        ("ml-backend-worker", worker_command),
    ):
        module, arguments = module_and_arguments(
            resolved["services"][service]["command"]
        )
        stack_module, stack_arguments = module_and_arguments(["python", *stack[1:]])
        assert module == stack_module, service
        assert option_names(arguments) == option_names(stack_arguments), service


def test_label_studio_command_is_the_stacks_with_the_same_options(
    resolved, tmp_path, monkeypatch
):
    from bulkshift.stack.labelstudio import LabelStudioServer
    from bulkshift.stack.processes import StackError

    try:
        server = LabelStudioServer(tmp_path / "ls")
    except StackError as error:
        pytest.skip(f"Label Studio is not installed here: {error}")
    stack, _ = stack_command(monkeypatch, server.start)
    command = resolved["services"]["label-studio"]["command"]

    assert Path(stack[0]).name == command[0] == "label-studio"
    assert stack[1] == command[1] == "start"
    assert option_names(command) == option_names(stack)
    # Listening on every interface of the container, not its loopback.
    assert command[command.index("--internal-host") + 1] == "0.0.0.0"
    assert (
        command[command.index("--data-dir") + 1]
        == environment_of(resolved, "label-studio")["LABEL_STUDIO_BASE_DATA_DIR"]
    )


def modules_launched_in(path: Path) -> set[str]:
    """Modules that literals like ``[python, "-m", "MODULE", …]`` in ``path`` run."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.List):
            items = [
                item.value if isinstance(item, ast.Constant) else None
                for item in node.elts
            ]
            modules.update(
                items[i + 1]
                for i, item in enumerate(items[:-1])
                if item == "-m" and isinstance(items[i + 1], str)
            )
    return modules


def test_the_plugin_module_is_the_one_the_stack_runs(resolved):
    # The stack starts the service inline (bulkshift/stack/run.py), so its command is
    # read from the source rather than captured.
    launched = set().union(
        *(
            modules_launched_in(path)
            for path in (REPOSITORY / "bulkshift" / "stack").glob("*.py")
        )
    )
    module, _ = module_and_arguments(resolved["services"]["bulk-shift"]["command"])

    assert module in launched, f"bulkshift/stack runs {sorted(launched)}, not {module}"


def test_python_commands_parse_with_the_services_own_parsers(resolved, monkeypatch):
    import bulk_shift_plugin.__main__ as plugin_main
    import ml_backend.__main__ as backend_main
    import ml_backend.worker as worker_main

    mains = {
        "ml-backend": backend_main.main,
        "ml-backend-worker": worker_main.main,
        "bulk-shift": plugin_main.main,
    }
    for service, expected_module in PYTHON_SERVICES.items():
        module, arguments = module_and_arguments(
            resolved["services"][service]["command"]
        )
        assert module == expected_module, service
        parse_with(parser_of(mains[service], monkeypatch), arguments)


def test_published_and_checked_ports_are_the_ones_the_services_listen_on(
    resolved, monkeypatch
):
    import ml_backend.__main__ as backend_main
    from bulk_shift_plugin.config import Settings as PluginSettings

    def checked_port(service):
        url = resolved["services"][service]["healthcheck"]["test"][-1]
        return urlparse(url).port

    _, arguments = module_and_arguments(resolved["services"]["ml-backend"]["command"])
    backend = parse_with(parser_of(backend_main.main, monkeypatch), arguments)
    assert backend.host == "0.0.0.0"
    assert checked_port("ml-backend") == backend.port
    assert str(backend.port) in resolved["services"]["ml-backend"]["expose"]

    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", environment_of(resolved, "bulk-shift"))
        plugin = PluginSettings.from_environment()
    assert plugin.host == "0.0.0.0"
    assert checked_port("bulk-shift") == plugin.port
    assert container_ports(resolved, "bulk-shift") == [plugin.port]

    command = resolved["services"]["label-studio"]["command"]
    port = int(command[command.index("--port") + 1])
    assert checked_port("label-studio") == port
    assert container_ports(resolved, "label-studio") == [port]


# -- environment ---------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(PYTHON_SERVICES))
def test_environment_names_are_the_ones_the_service_reads(
    resolved, monkeypatch, service
):
    read, known = (plugin_variables if service == "bulk-shift" else backend_variables)(
        monkeypatch
    )
    names = set(environment_of(resolved, service))

    missing = read - names
    assert not missing, (
        f"{service} reads {sorted(missing)} but docker-compose.yml does not set them; "
        "add them (with the code's default) to its environment"
    )
    unknown = names - known - PROCESS_VARIABLES
    assert not unknown, (
        f"docker-compose.yml sets {sorted(unknown)} for {service}, which its code "
        "never reads: a typo, or a variable that was renamed"
    )


def test_backend_environment_keeps_the_local_defaults(resolved, monkeypatch):
    """Apart from addresses and the key, the backend runs as the local run does."""
    from ml_backend.config import Settings

    for service in ("ml-backend", "ml-backend-worker"):
        with monkeypatch.context() as patch:
            patch.setattr(os, "environ", environment_of(resolved, service))
            composed = Settings.from_environment()
        with monkeypatch.context() as patch:
            patch.setattr(os, "environ", {})
            local = Settings.from_environment()

        different = {
            name
            for name in Settings.__dataclass_fields__
            if getattr(composed, name) != getattr(local, name)
        }
        assert different == {"label_studio_url", "api_key"}, service


def test_plugin_environment_keeps_the_local_defaults(resolved, monkeypatch):
    from bulk_shift_plugin.config import Settings

    environment = environment_of(resolved, "bulk-shift")
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", environment)
        composed = Settings.from_environment()
    with monkeypatch.context() as patch:
        patch.setattr(
            os,
            "environ",
            {
                name: environment[name]
                for name in ("LABEL_STUDIO_API_KEY", "BULKSHIFT_WEBHOOK_SECRET")
            },
        )
        local = Settings.from_environment()

    different = {
        name
        for name in Settings.__dataclass_fields__
        if getattr(composed, name) != getattr(local, name)
    }
    assert different == {
        "redis_url",
        "label_studio_url",
        "host",
        "public_url",
        "data_dir",
    }


def test_label_studio_environment_is_the_stacks(resolved, tmp_path, monkeypatch):
    from bulkshift.stack.labelstudio import LabelStudioServer
    from bulkshift.stack.processes import StackError

    try:
        server = LabelStudioServer(tmp_path / "ls")
    except StackError as error:
        pytest.skip(f"Label Studio is not installed here: {error}")
    with monkeypatch.context() as patch:
        patch.setattr(os, "environ", {})
        stack = server.environment()
    composed = environment_of(resolved, "label-studio")

    # HOME: the image's user has its own; the rest are paths, ports and credentials
    # that differ by design, so only the names are compared for them.
    missing = set(stack) - set(composed) - {"HOME"}
    assert not missing, (
        f"the stack sets {sorted(missing)} for Label Studio; compose not"
    )
    switches = {
        name: value for name, value in stack.items() if value in ("true", "false", "")
    }
    assert switches, "expected on/off settings in the stack's Label Studio environment"
    for name, value in switches.items():
        assert composed[name] == value, (
            f"{name}: stack {value!r}, compose {composed[name]!r}"
        )


# -- the files in docker/ ------------------------------------------------------------


def test_image_requirements_are_the_pyproject_pins():
    sys.path.insert(0, str(REPOSITORY / "docker"))
    try:
        from requirements_from_pyproject import UnknownExtraError, requirements
    finally:
        sys.path.remove(str(REPOSITORY / "docker"))
    wanted = requirements(REPOSITORY / "pyproject.toml", ["services", "vgg16"])
    assert "label-studio==1.23.2" in wanted
    assert any(line.startswith("tensorflow-cpu") for line in wanted)
    assert len(wanted) == len(set(wanted))
    with pytest.raises(UnknownExtraError, match="nope"):
        requirements(REPOSITORY / "pyproject.toml", ["nope"])


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(*arguments, environment=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY), **(environment or {})},
    )


def test_http_healthcheck_passes_on_200_only():
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert run_healthcheck("http", f"{base}/health").returncode == 0
        failed = run_healthcheck("http", f"{base}/other")
    finally:
        server.shutdown()
        server.server_close()
    assert failed.returncode == 1
    assert "503" in failed.stderr
    assert run_healthcheck("http", f"{base}/health").returncode == 1  # nobody there


@pytest.mark.integration
def test_worker_healthcheck_needs_a_registered_worker_of_this_host(redis_server):
    from redis import Redis
    from rq import Queue, Worker

    queue_name = f"compose-test-{os.getpid()}"
    environment = {"REDIS_URL": redis_server, "BULKSHIFT_QUEUE": queue_name}
    assert run_healthcheck("worker", environment=environment).returncode == 1

    connection = Redis.from_url(redis_server)
    worker = Worker([Queue(queue_name, connection=connection)], connection=connection)
    assert worker.hostname == socket.gethostname()
    worker.register_birth()
    try:
        assert run_healthcheck("worker", environment=environment).returncode == 0
    finally:
        worker.register_death()
