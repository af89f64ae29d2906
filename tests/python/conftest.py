"""Fixtures that start the real `firehose` binary for each test.

`$FIREHOSE_BIN` names the binary (scripts/test sets it); by default the debug build of this
repository. Each broker listens on 127.0.0.1 port 0, the port is read from its log line
`MQTT listener bound addr=...`, and it is stopped with SIGTERM at the end of the test, which must
make it exit with status 0.
"""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from mqtt_helpers import LIMITED, PUB, TIMEOUT

REPO = pathlib.Path(__file__).resolve().parents[2]
BOUND = re.compile(r"MQTT listener bound addr=(\S+)")


def firehose_bin() -> str:
    path = os.environ.get("FIREHOSE_BIN")
    if path:
        return path
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(pathlib.Path(target) / "debug" / "firehose")


def hash_password(password: str) -> str:
    out = subprocess.run(
        [firehose_bin(), "passwd"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"firehose passwd failed: {out.stderr}"
    digest = out.stdout.strip()
    assert digest.startswith("$argon2id$"), f"firehose passwd printed {out.stdout!r}"
    return digest


def terminate(proc: subprocess.Popen) -> bool:
    """SIGTERM, then wait (bounded); kills a process that ignored it. Returns whether it exited
    on SIGTERM, for callers that count ignoring it as a failure."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    return True


class Broker:
    """One running `firehose serve`."""

    def __init__(self, workdir: pathlib.Path, config: str, users_toml: str | None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        args = [
            firehose_bin(),
            "serve",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
            str(workdir / "data"),
        ]
        if users_toml is not None:
            users = workdir / "users.toml"
            users.write_text(users_toml)
            args += ["--users", str(users)]
        if config:
            conf = workdir / "firehose.toml"
            conf.write_text(config)
            args += ["--config", str(conf)]
        # The developer's FIREHOSE_* settings (and log filters) must not change what is tested.
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "RUST_LOG" and not k.startswith("FIREHOSE_")
        }
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0
        bound = threading.Event()

        def read_log():
            # Keep reading for the life of the process so that the pipe never fills.
            for line in self.proc.stderr:
                self.lines.append(line)
                m = BOUND.search(line)
                if m and not bound.is_set():
                    host, _, port = m.group(1).strip('"').rpartition(":")
                    self.host, self.port = host.strip("[]"), int(port)
                    bound.set()

        threading.Thread(target=read_log, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        while not bound.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(
                    "firehose serve did not log its MQTT address "
                    f"(exit {self.proc.returncode}); log:\n{self.log()}"
                )

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); returns the exit status."""
        if not terminate(self.proc):
            pytest.fail(f"firehose serve ignored SIGTERM for {TIMEOUT}s; log:\n{self.log()}")
        return self.proc.returncode


@pytest.fixture(scope="session")
def users_toml() -> str:
    """The users file of every test broker: `pub` may publish anywhere, `limited` under
    `test/allowed/#` only. Hashed once per session."""
    text = ""
    for (name, password), publish in ((PUB, ["#"]), (LIMITED, ["test/allowed/#"])):
        text += (
            "[[user]]\n"
            f'name = "{name}"\n'
            f'password = "{hash_password(password)}"\n'
            f"publish = {publish!r}\n\n".replace("'", '"')
        )
    return text


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see whether the test failed (item.rep_call), to show the broker's log.
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture
def broker_factory(request, tmp_path, users_toml):
    """Starts brokers with extra config TOML; stops them after the test and checks that SIGTERM
    made them exit with status 0. The broker's log is printed when the test failed."""
    started: list[Broker] = []

    def start(extra_config: str = "") -> Broker:
        config = "[sys]\ninterval_secs = 1\n" + extra_config
        b = Broker(tmp_path / f"broker{len(started)}", config, users_toml)
        started.append(b)
        return b

    yield start
    rep = getattr(request.node, "rep_call", None)
    for b in started:
        code = b.stop()
        if rep is not None and rep.failed:
            print(f"---- log of broker on port {b.port} (last 60 lines) ----")
            print("".join(b.lines[-60:]))
        assert code == 0, f"firehose serve exited with {code} on SIGTERM; log:\n{b.log()}"


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture(params=[mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def protocol(request) -> int:
    """Runs a test once per protocol version."""
    return request.param


@pytest.fixture
def clients():
    """Collects the helper clients a test makes and closes them afterwards."""
    made = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def client(broker, clients):
    """`client(protocol, **kw)` connects a `mqtt_helpers.Client` to the test's broker (or to
    `broker=` another one) and closes it after the test."""
    from mqtt_helpers import Client

    def make(protocol, broker=broker, **kw):
        c = Client(broker, protocol, **kw)
        clients.append(c)
        return c

    return make
