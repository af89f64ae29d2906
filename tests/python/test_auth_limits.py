"""Password guessing through paho-mqtt on MQTT 3.1.1 and 5.0, from several loopback addresses:
wrong passwords back their address off (answered "Server busy" / 3.1.1 "server unavailable"
without a check), while a valid login from another address is let in."""

import queue

import paho.mqtt.client as mqtt

from mqtt_helpers import PUB, TIMEOUT, V5, unique_id

BACKOFF = (
    "[limits]\nauth_failures_before_backoff = 2\n"
    "auth_backoff_initial_secs = 600\nauth_backoff_max_secs = 600\n"
)


def login(broker, protocol, source: str, user: str, password: str) -> int:
    """The CONNACK reason code of a login from `source` (paho reports the 3.1.1 return codes 3,
    4 and 5 as the MQTT 5 codes 0x88, 0x86 and 0x87)."""
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=unique_id("auth"),
        protocol=protocol,
        reconnect_on_failure=False,
    )
    c.on_connect = lambda client, userdata, flags, rc, properties: got.put(rc.value)
    c.username_pw_set(user, password)
    c.connect(broker.host, broker.port, 60, bind_address=source)
    c.loop_start()
    try:
        return got.get(timeout=TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()


def test_wrong_passwords_back_their_address_off(broker_factory, protocol):
    b = broker_factory(BACKOFF)
    busy = 0x89 if protocol == V5 else 0x88
    codes = [login(b, protocol, "127.0.0.2", f"guess-{n}", "wrong") for n in range(5)]
    assert codes == [0x86, 0x86, 0x86, busy, busy], [hex(c) for c in codes]
    # Backed off, the address is not checked at all, not even for the right password...
    assert login(b, protocol, "127.0.0.2", *PUB) == busy
    # ...while a login from another address goes through.
    assert login(b, protocol, "127.0.0.3", *PUB) == 0
