"""A thin, bounded wrapper around paho-mqtt 2.x for black-box tests.

Every wait has a timeout and fails the test with a message; callbacks only fill queues, so a
test reads like a script: connect, subscribe, publish, expect.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

# How long one expected event may take. Generous: CI machines are small and busy.
TIMEOUT = 10.0
# How long to listen when proving that nothing arrives (only where no marker can prove it).
QUIET = 0.7

PUB = ("pub", "pub-secret")
LIMITED = ("limited", "limited-secret")

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5

_ids = itertools.count(1)


def unique_id(prefix: str = "py") -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def props(packet_type: int, **values: Any) -> Properties:
    """`props(PacketTypes.PUBLISH, ContentType="text/plain")`."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def publish_props(**values: Any) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


class ConnectRefused(AssertionError):
    pass


class Client:
    """One MQTT connection driven by paho's network thread, without automatic reconnection."""

    def __init__(
        self,
        broker,
        protocol: int,
        client_id: str | None = None,
        auth: tuple[str, str] | None = None,
        clean: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        will_props: Properties | None = None,
        connect_props: dict[str, Any] | None = None,
        manual_ack: bool = False,
        expect_rc: int | None = 0,
    ):
        self.broker = broker
        self.protocol = protocol
        self.v5 = protocol == mqtt.MQTTv5
        self.client_id = unique_id() if client_id is None else client_id
        self.clean = clean
        self.keepalive = keepalive
        kwargs: dict[str, Any] = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if not self.v5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self._acks: dict[tuple[str, int], Any] = {}
        self._cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        if auth:
            self.c.username_pw_set(*auth)
        if will:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos, retain, properties=will_props)
        self.connect_props = None
        if self.v5:
            values = dict(connect_props or {})
            if session_expiry is not None:
                values["SessionExpiryInterval"] = session_expiry
            if values:
                self.connect_props = props(PacketTypes.CONNECT, **values)
        self.session_present: bool | None = None
        self.connack_rc: int | None = None
        self.connack_props: Properties | None = None
        self.closed = False
        self.connect(expect_rc)

    # -- callbacks (paho's thread) ---------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connacks.put((flags.session_present, reason_code.value, properties))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects.put(reason_code)

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _ack(self, kind: str, mid: int, value: Any) -> None:
        with self._cond:
            self._acks[(kind, mid)] = value
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._ack("sub", mid, [rc.value for rc in reason_codes])

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self._ack("unsub", mid, reason_codes)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._ack("pub", mid, reason_code.value)

    def _wait_ack(self, kind: str, mid: int, what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while (kind, mid) not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: no {what} within {TIMEOUT}s")
                self._cond.wait(left)
            return self._acks.pop((kind, mid))

    # -- connection ------------------------------------------------------------------------

    def connect(self, expect_rc: int | None = 0) -> int | None:
        """Connects and waits for CONNACK. With `expect_rc` None, returns the reason code
        (None if the server closed without CONNACK) instead of asserting it."""
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self.connect_props
        self.closed = False
        self.c.connect(self.broker.host, self.broker.port, self.keepalive, **kwargs)
        self.c.loop_start()
        try:
            present, rc, properties = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            if expect_rc is None:
                self.close()
                return None
            raise AssertionError(f"{self.client_id}: no CONNACK within {TIMEOUT}s")
        self.session_present, self.connack_rc, self.connack_props = present, rc, properties
        if expect_rc is not None and rc != expect_rc:
            self.close()
            raise ConnectRefused(f"{self.client_id}: CONNACK reason {rc:#04x}, expected {expect_rc:#04x}")
        return rc

    def reconnect(self, expect_rc: int | None = 0) -> int | None:
        self.c.loop_stop()
        return self.connect(expect_rc)

    def wait_disconnected(self, timeout: float = TIMEOUT) -> ReasonCode:
        """Waits until the server closes the connection; returns paho's reason code (a v5
        server's DISCONNECT reason when it sent one)."""
        try:
            rc = self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: still connected after {timeout}s")
        self.c.loop_stop()
        self.closed = True
        return rc

    def disconnect(self, reason: int | None = None) -> None:
        """Normal DISCONNECT (v5: with `reason`), then waits for the close."""
        rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason) if reason is not None else None
        self.c.disconnect(reasoncode=rc)
        self.wait_disconnected()

    def drop(self) -> None:
        """Closes the TCP connection without DISCONNECT, as a crash would."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.wait_disconnected()

    def go_silent(self) -> None:
        """Stops paho's thread: the connection stays open but nothing is sent (no PINGREQ)."""
        self.c.loop_stop()

    def close(self) -> None:
        if not self.closed:
            try:
                self.c.disconnect()
            except Exception:
                pass
        self.c.loop_stop()
        self.closed = True

    # -- operations ------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 0, options: SubscribeOptions | None = None,
                  properties: Properties | None = None) -> list[int]:
        """Subscribes and returns the SUBACK reason codes."""
        if options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe: {rc}"
        return self._wait_ack("sub", mid, f"SUBACK for {topic!r}")

    def sub(self, topic: str, qos: int = 0, **kw) -> None:
        """Subscribes and asserts that `qos` was granted."""
        codes = self.subscribe(topic, qos, **kw)
        assert codes == [qos], f"SUBACK for {topic!r}: {codes}"

    def unsubscribe(self, topic: str) -> None:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._wait_ack("unsub", mid, f"UNSUBACK for {topic!r}")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> int:
        """Publishes and waits until paho is done with it (sent for QoS 0, PUBACK/PUBCOMP
        otherwise); returns the reason code (0 for 3.1.1 and QoS 0)."""
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish: {info.rc}"
        return self._wait_ack("pub", info.mid, f"completion of the publish to {topic!r}")

    def recv(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s")

    def until(self, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Messages received before the one with `payload` (which is consumed): a later marker
        proves that an earlier message was not delivered."""
        before = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg.payload == payload:
                return before
            before.append(msg)

    def expect_nothing(self, quiet: float = QUIET) -> None:
        try:
            msg = self.messages.get(timeout=quiet)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {msg.topic} {msg.payload!r}")

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        """Acknowledges a message (clients made with manual_ack=True)."""
        self.c.ack(msg.mid, msg.qos)
