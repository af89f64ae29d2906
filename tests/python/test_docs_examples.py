"""The Python example of docs/consumers.md (docs/examples/consumer.py), run as a user would:
it must print what is published, and after a restart what was published while it was down."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import paho.mqtt.client as mqtt

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "consumer.py"
TIMEOUT = 20


def run_example(broker, count: int) -> list[dict]:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), broker.host, str(broker.port), str(count)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def publish(broker, topic: str, payload: dict, retain: bool = False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("pub", "pub-secret")
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(TIMEOUT)
    c.disconnect()
    c.loop_stop()


def test_consumer_example_resumes_its_session(broker):
    topic = "gerrit/openstack/nova/comment-added"
    # A retained event reaches the first run as soon as it subscribes: no race.
    publish(broker, topic, {"n": 0}, retain=True)
    assert [e["payload"]["n"] for e in run_example(broker, 1)] == [0]
    # Published while it is down: the persistent session gets them on restart, in order (the
    # retained one comes again because the example subscribes again).
    for n in (1, 2):
        publish(broker, topic, {"n": n})
    payloads = [e["payload"]["n"] for e in run_example(broker, 3)]
    assert [n for n in payloads if n != 0] == [1, 2], payloads
