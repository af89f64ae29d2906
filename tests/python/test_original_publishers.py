"""The original OpenStack Firehose's external publishers keep working against Firehose.

They published with paho's `publish.single` over MQTT: the Ansible callback
(system-config modules/openstack_project/files/puppetmaster/mqtt.py, `CallbackModule._publish`)
and the gearman workers (puppet-subunit2sql subunit-gearman-worker.py and puppet-log_processor
log-gearman-worker.py, `PushMQTT.publish_single`): one connection per message, MQTT 3.1.1, an
empty client id, QoS 0, not retained, user and password. The callback's code is GPL-3.0 (it is
part of Ansible), so it is not run here: its calls are reproduced, with the messages of
crates/firehose/tests/fixtures/compat/original-publishers.json (what its callback methods and
the workers wrote, topic by topic; their schemas are checked in bridge_schemas.rs).

The users are the worked users file of docs/topics.md, as written there (only the password
hashes filled in), so the documentation is what is tested.
"""

from __future__ import annotations

import json
import re

import paho.mqtt
import paho.mqtt.client as mqtt
import paho.mqtt.publish as publish
import pytest

from conftest import REPO, Broker, hash_password
from mqtt_helpers import Client

FIXTURE = REPO / "crates" / "firehose" / "tests" / "fixtures" / "compat" / "original-publishers.json"
TOPICS_MD = REPO / "docs" / "topics.md"


def password(user: str) -> str:
    return f"{user} secret"


def documented_users() -> str:
    """The ```toml block of docs/topics.md that holds the workers' users, password hashes
    filled in."""
    blocks = re.findall(r"```toml\n(.*?)```", TOPICS_MD.read_text(), re.S)
    block = next((b for b in blocks if 'name = "subunit-worker"' in b), None)
    assert block is not None, "docs/topics.md has no users file for the original publishers"
    out, user = [], None
    for line in block.splitlines():
        m = re.match(r'name = "(.+)"', line)
        if m:
            user = m.group(1)
        if line.startswith("password = ") and user:
            line = f'password = "{hash_password(password(user))}"'
        out.append(line)
    return "\n".join(out) + "\n"


def messages() -> list[dict]:
    return json.loads(FIXTURE.read_text())["messages"]


@pytest.fixture(scope="module")
def firehose(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("original"), "", documented_users())
    yield broker
    code = broker.stop()
    assert code == 0, f"firehose serve exited with {code} on SIGTERM; log:\n{broker.log()}"


def publish_as_they_did(broker: Broker, user: str, topic: str, payload: str, pw: str | None = None):
    """`publish.single` as mqtt.py's `_publish` and `PushMQTT.publish_single` called it."""
    publish.single(
        topic,
        payload,
        hostname=broker.host,
        port=broker.port,
        client_id="",
        keepalive=60,
        will=None,
        auth={"username": user, "password": password(user) if pw is None else pw},
        tls=None,
    )


@pytest.fixture
def everything(firehose):
    sub = Client(firehose, mqtt.MQTTv311)
    sub.connect()
    sub.sub("#", 1)
    yield sub
    sub.close()


def test_their_messages_arrive_as_they_sent_them(firehose, everything):
    sent = messages()
    assert {m["user"] for m in sent} == {"ansible", "subunit-worker", "log-worker"}
    for m in sent:
        # json.dumps of the dict, as the callback and the workers wrote it: keys in their order.
        publish_as_they_did(firehose, m["user"], m["topic"], json.dumps(m["payload"]))
    for m in sent:
        got = everything.recv()
        assert got.topic == m["topic"], m["what"]
        assert got.payload == json.dumps(m["payload"]).encode(), m["what"]
        # Published at QoS 0: a QoS 1 subscription gets it at 0, and nothing is retained.
        assert (got.qos, got.retain) == (0, False), m["what"]


def test_each_publisher_stays_in_its_topics(firehose, everything):
    # The subunit workers' user may not write the log workers' topics, nor Gerrit's: the
    # publishes are acknowledged and dropped (MQTT 3.1.1 has no refusal), as Mosquitto's ACL did.
    for topic in ("gearman-logstash/w/openstack/nova/1/retrieve_logs", "gerrit/openstack/nova/x"):
        publish_as_they_did(firehose, "subunit-worker", topic, '{"forged": true}')
    publish_as_they_did(firehose, "ansible", "ansible/playbook/x/action/start", "marker")
    before = everything.until(b"marker")
    assert before == [], [(m.topic, m.payload) for m in before]


def test_a_wrong_password_is_refused_at_connect(firehose):
    # CONNACK 4 (bad user name or password): paho's publish.single raises, as it did when
    # Mosquitto refused the password.
    with pytest.raises(paho.mqtt.MQTTException, match="user name or password"):
        publish_as_they_did(firehose, "log-worker", "gearman-logstash/x", "{}", pw="wrong")
