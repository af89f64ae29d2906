"""paho-mqtt 2.x with `transport="websockets"` against Firehose's HTTP and HTTPS listeners.

These tests start their own broker (the shared fixtures keep HTTP off): MQTT, HTTP and HTTPS on
127.0.0.1 port 0, the addresses read from the `... listener bound addr=` log lines, a CA and a
server certificate made with the `openssl` command.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import ssl
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from conftest import firehose_bin, hash_password, terminate
from mqtt_helpers import PUB, TIMEOUT, unique_id

BOUND = re.compile(r"(MQTT|HTTP|HTTPS) listener bound addr=(\S+)")


def openssl(cwd: pathlib.Path, *args: str) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {args} failed: {out.stderr}"


def make_pki(d: pathlib.Path) -> dict[str, pathlib.Path]:
    """A CA and a server certificate for localhost / 127.0.0.1."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(d, "req", "-x509", *ec, "-days", "2", "-subj", "/CN=py-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl(d, "req", "-new", *ec, "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


class WebBroker:
    """`firehose serve` with MQTT, HTTP and HTTPS on loopback."""

    def __init__(self, workdir: pathlib.Path, pki: dict[str, pathlib.Path]):
        workdir.mkdir(parents=True, exist_ok=True)
        users = workdir / "users.toml"
        users.write_text(
            f'[[user]]\nname = "{PUB[0]}"\npassword = "{hash_password(PUB[1])}"\npublish = ["#"]\n'
        )
        args = [
            firehose_bin(), "serve",
            "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0", "--https", "127.0.0.1:0",
            "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
            "--data-dir", str(workdir / "data"), "--users", str(users),
        ]
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("FIREHOSE_")}
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.addrs: dict[str, tuple[str, int]] = {}
        done = threading.Event()

        def read_log():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = BOUND.search(line)
                if m:
                    host, _, port = m.group(2).strip('"').rpartition(":")
                    self.addrs[m.group(1)] = (host, int(port))
                    if len(self.addrs) == 3:
                        done.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not done.wait(TIMEOUT):
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"firehose did not log its three addresses; log:\n{''.join(self.lines)}")

    def stop(self) -> int:
        terminate(self.proc)
        return self.proc.returncode


@pytest.fixture
def web(tmp_path):
    pki = make_pki(tmp_path / "pki")
    b = WebBroker(tmp_path / "broker", pki)
    b.pki = pki
    yield b
    code = b.stop()
    assert code == 0, f"firehose exited with {code} on SIGTERM; log:\n{''.join(b.lines)}"


class WsClient:
    """A paho client over WebSocket whose callbacks fill queues; every wait is bounded."""

    def __init__(self, addr, protocol, ca=None, auth=None, path="/mqtt"):
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=unique_id("ws"),
            protocol=protocol,
            transport="websockets",
            reconnect_on_failure=False,
        )
        self.c.ws_set_options(path=path)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca))
        if auth:
            self.c.username_pw_set(*auth)
        self.connacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc.value)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(("sub", [r.value for r in rcs]))
        self.c.on_publish = lambda c, u, mid, rc, p: self.events.put(("pub", rc.value))
        host, port = addr
        # A server certificate for "localhost"; connect by name so hostname checks apply.
        self.c.connect("localhost" if ca is not None else host, port, 30)
        self.c.loop_start()
        rc = self.connacks.get(timeout=TIMEOUT)
        assert rc == 0, f"CONNACK {rc:#04x}"

    def expect(self, kind):
        got, value = self.events.get(timeout=TIMEOUT)
        assert got == kind, f"expected {kind}, got {got}"
        return value

    def subscribe(self, topic, qos=1):
        self.c.subscribe(topic, qos)
        assert self.expect("sub") == [qos]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_websocket_pubsub(web, protocol):
    sub = WsClient(web.addrs["HTTP"], protocol)
    pub = WsClient(web.addrs["HTTP"], protocol, auth=PUB)
    try:
        sub.subscribe("py/ws/#", 1)
        pub.c.publish("py/ws/a", b"hello over websocket", qos=1)
        assert pub.expect("pub") == 0
        msg = sub.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload, msg.qos) == ("py/ws/a", b"hello over websocket", 1)
    finally:
        sub.close()
        pub.close()


def test_secure_websocket_pubsub(web):
    ca = web.pki["ca"]
    sub = WsClient(web.addrs["HTTPS"], mqtt.MQTTv5, ca=ca)
    pub = WsClient(web.addrs["HTTPS"], mqtt.MQTTv311, ca=ca, auth=PUB)
    try:
        sub.subscribe("py/wss/#", 0)
        pub.c.publish("py/wss/b", b"over wss", qos=1)
        assert pub.expect("pub") == 0
        msg = sub.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload) == ("py/wss/b", b"over wss")
    finally:
        sub.close()
        pub.close()


def test_anonymous_websocket_publish_refused(web):
    sub = WsClient(web.addrs["HTTP"], mqtt.MQTTv5)
    anon = WsClient(web.addrs["HTTP"], mqtt.MQTTv5)
    pub = WsClient(web.addrs["HTTP"], mqtt.MQTTv5, auth=PUB)
    try:
        sub.subscribe("py/anon/#", 1)
        anon.c.publish("py/anon/x", b"not allowed", qos=1)
        assert anon.expect("pub") == 0x87
        pub.c.publish("py/anon/marker", b"marker", qos=1)
        assert pub.expect("pub") == 0
        msg = sub.messages.get(timeout=TIMEOUT)
        assert msg.payload == b"marker", "the anonymous publish was delivered"
    finally:
        for c in (sub, anon, pub):
            c.close()


def test_healthz_and_metrics_over_https(web):
    ctx = ssl.create_default_context(cafile=str(web.pki["ca"]))
    _, port = web.addrs["HTTPS"]
    with urllib.request.urlopen(f"https://localhost:{port}/healthz", context=ctx, timeout=TIMEOUT) as r:
        assert r.status == 200 and r.read() == b"ok\n"
    host, port = web.addrs["HTTP"]
    sub = WsClient(web.addrs["HTTP"], mqtt.MQTTv311)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=TIMEOUT) as r:
                body = r.read().decode()
            if 'firehose_connections_open{transport="ws"} 1' in body.splitlines():
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
    finally:
        sub.close()
