"""Publish/subscribe behaviour on MQTT 3.1.1 and 5.0 through paho-mqtt: QoS, retained messages,
wildcards, `$` topics, `$SYS`, shared subscriptions, access control."""

import re
import time

import pytest

from mqtt_helpers import LIMITED, PUB, QUIET, TIMEOUT, V5


def test_qos_matrix(client, protocol):
    subs = []
    for qos in range(3):
        s = client(protocol)
        s.sub("test/matrix", qos)
        subs.append(s)
    pub = client(protocol, auth=PUB)
    for pub_qos in range(3):
        payload = f"published at {pub_qos}".encode()
        assert pub.publish("test/matrix", payload, qos=pub_qos) == 0
        for sub_qos, s in enumerate(subs):
            msg = s.recv()
            assert (msg.topic, msg.payload) == ("test/matrix", payload)
            assert msg.qos == min(pub_qos, sub_qos), f"pub {pub_qos} to sub {sub_qos}"
            assert not msg.retain


def test_many_messages_in_order(client, protocol):
    s = client(protocol)
    s.sub("test/order", 1)
    pub = client(protocol, auth=PUB)
    for i in range(200):
        pub.c.publish("test/order", str(i), qos=1)
    got = [int(s.recv().payload) for _ in range(200)]
    assert got == list(range(200)), "messages from one publisher arrive in order"


def test_retained_set_replace_clear(client, protocol):
    pub = client(protocol, auth=PUB)
    pub.publish("test/retain/a", b"v1", qos=1, retain=True)
    s1 = client(protocol)
    s1.sub("test/retain/#", 1)
    msg = s1.recv()
    assert (msg.topic, msg.payload, msg.retain) == ("test/retain/a", b"v1", True)

    pub.publish("test/retain/a", b"v2", qos=1, retain=True)
    live = s1.recv()
    assert (live.payload, live.retain) == (b"v2", False), "live copy of a retained message"
    s2 = client(protocol)
    s2.sub("test/retain/#", 1)
    pub.publish("test/retain/marker", b"marker", qos=1)
    assert [(m.payload, m.retain) for m in s2.until(b"marker")] == [(b"v2", True)]

    pub.publish("test/retain/a", b"", qos=1, retain=True)
    s3 = client(protocol)
    s3.sub("test/retain/#", 1)
    pub.publish("test/retain/marker", b"marker", qos=1)
    assert s3.until(b"marker") == [], "cleared retained message still delivered"


def test_retained_per_topic_under_wildcard(client, protocol):
    pub = client(protocol, auth=PUB)
    for i in range(5):
        pub.publish(f"test/many/{i}", f"r{i}", qos=1, retain=True)
    s = client(protocol)
    s.sub("test/many/+", 0)
    got = sorted((s.recv().topic) for _ in range(5))
    assert got == [f"test/many/{i}" for i in range(5)]
    s.expect_nothing()


@pytest.mark.parametrize(
    "flt,expected",
    [
        ("sport/tennis/+", {"sport/tennis/player1", "sport/tennis/player2"}),
        ("sport/#", {"sport", "sport/tennis/player1", "sport/tennis/player2",
                     "sport/tennis/player1/ranking", "sport/"}),
        ("sport/+", {"sport/"}),
        ("+/tennis/#", {"sport/tennis/player1", "sport/tennis/player2",
                        "sport/tennis/player1/ranking"}),
        ("+", {"sport"}),
        ("/+", {"/finance"}),
        ("+/+", {"/finance", "sport/"}),
        ("#", {"sport", "sport/tennis/player1", "sport/tennis/player2",
               "sport/tennis/player1/ranking", "sport/", "/finance", "marker"}),
    ],
)
def test_wildcards(client, protocol, flt, expected):
    s = client(protocol)
    s.sub(flt, 0)
    if flt != "#":
        s.sub("marker", 0)
    pub = client(protocol, auth=PUB)
    for topic in ["sport", "sport/tennis/player1", "sport/tennis/player2",
                  "sport/tennis/player1/ranking", "sport/", "/finance"]:
        pub.publish(topic, topic.encode(), qos=1)
    pub.publish("marker", b"marker", qos=1)
    got = {m.topic for m in s.until(b"marker")}
    if flt == "#":
        expected = expected - {"marker"}
    assert got == expected


def test_dollar_topics_not_matched_at_first_level(client, protocol):
    hash_all = client(protocol)
    hash_all.sub("#", 0)
    plus = client(protocol)
    plus.sub("+/broker/uptime", 0)
    plus.sub("marker", 0)
    sys_sub = client(protocol)
    sys_sub.sub("$SYS/broker/uptime", 0)
    # Two $SYS rounds after the wildcard subscriptions exist.
    for _ in range(2):
        assert sys_sub.recv().topic == "$SYS/broker/uptime"
    client(protocol, auth=PUB).publish("marker", b"marker", qos=1)
    for s in (hash_all, plus):
        leaked = [m.topic for m in s.until(b"marker") if m.topic.startswith("$")]
        assert leaked == []


SYS_TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
]


def leading_int(payload: bytes) -> int | None:
    m = re.match(rb"\s*(\d+)", payload)
    return int(m.group(1)) if m else None


def test_sys_topics(client, protocol):
    pub = client(protocol, auth=PUB)
    for i in range(3):
        pub.publish("test/counted", str(i), qos=1)
    s = client(protocol)
    s.sub("$SYS/broker/#", 0)
    latest: dict[str, bytes] = {}

    def done():
        return (
            all(t in latest for t in SYS_TOPICS)
            and latest["$SYS/broker/version"].strip() != b""
            and all(leading_int(latest[t]) is not None for t in SYS_TOPICS[1:])
            and leading_int(latest["$SYS/broker/clients/connected"]) >= 2
            and leading_int(latest["$SYS/broker/messages/received"]) >= 3
            and leading_int(latest["$SYS/broker/bytes/received"]) > 0
            and leading_int(latest["$SYS/broker/bytes/sent"]) > 0
        )

    deadline = time.monotonic() + TIMEOUT
    while not done():
        try:
            msg = s.recv(timeout=max(0.0, deadline - time.monotonic()))
        except AssertionError:
            pytest.fail(f"$SYS values after {TIMEOUT}s: {latest}")
        assert msg.topic.startswith("$SYS/broker/")
        latest[msg.topic] = msg.payload


def test_sys_uptime_increases(client, protocol):
    s = client(protocol)
    s.sub("$SYS/broker/uptime", 0)
    first = leading_int(s.recv().payload)
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = leading_int(s.recv().payload)
        if value > first:
            break
        assert time.monotonic() < deadline, "uptime did not increase"


def test_shared_subscription(client, protocol):
    members = []
    for _ in range(3):
        m = client(protocol)
        m.sub("$share/workers/test/jobs", 1)
        members.append(m)
    other_group = client(protocol)
    other_group.sub("$share/audit/test/jobs", 1)
    plain = client(protocol)
    plain.sub("test/jobs", 1)
    pub = client(protocol, auth=PUB)
    n = 30
    for i in range(n):
        pub.publish("test/jobs", f"job{i}", qos=1)
    expected = {f"job{i}".encode() for i in range(n)}
    assert {plain.recv().payload for _ in range(n)} == expected
    assert {other_group.recv().payload for _ in range(n)} == expected, "one copy per group"
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n and time.monotonic() < deadline:
        for m in members:
            try:
                got.append(m.messages.get(timeout=0.05).payload)
            except Exception:
                pass
    for m in members:
        m.expect_nothing()
    assert len(got) == n and set(got) == expected, "each message to exactly one member"


def test_shared_subscription_survives_member_leaving(client, protocol):
    a = client(protocol)
    a.sub("$share/g/test/failover", 1)
    b = client(protocol)
    b.sub("$share/g/test/failover", 1)
    a.disconnect()
    pub = client(protocol, auth=PUB)
    for i in range(5):
        pub.publish("test/failover", f"f{i}", qos=1)
    assert sorted(b.recv().payload for _ in range(5)) == [f"f{i}".encode() for i in range(5)]


def test_unsubscribe(client, protocol):
    s = client(protocol)
    s.sub("test/unsub", 1)
    s.sub("test/marker", 1)
    pub = client(protocol, auth=PUB)
    pub.publish("test/unsub", b"one", qos=1)
    assert s.recv().payload == b"one"
    s.unsubscribe("test/unsub")
    pub.publish("test/unsub", b"two", qos=1)
    pub.publish("test/marker", b"marker", qos=1)
    assert s.until(b"marker") == []


def test_overlapping_subscriptions_get_max_qos(client, protocol):
    s = client(protocol)
    s.sub("test/overlap/#", 0)
    s.sub("test/overlap/x", 2)
    s.sub("test/marker", 2)
    pub = client(protocol, auth=PUB)
    pub.publish("test/overlap/x", b"o", qos=2)
    # Same QoS as the message: only then is the marker sure to come after it.
    pub.publish("test/marker", b"marker", qos=2)
    got = s.until(b"marker")
    assert got, "message on overlapping subscriptions not delivered"
    # 3.1.1 allows one copy per subscription; a single copy must carry the highest QoS.
    assert max(m.qos for m in got) == 2
    assert len(got) <= 2


def test_anonymous_cannot_publish(client, protocol):
    s = client(protocol)
    s.sub("test/anon", 1)
    anon = client(protocol)
    if protocol == V5:
        assert anon.publish("test/anon", b"nope", qos=1) == 0x87, "PUBACK Not authorized"
        anon.publish("test/anon", b"nope0", qos=0)
    else:
        # 3.1.1 has no way to say no: the broker drops the message or closes the connection.
        anon.c.publish("test/anon", b"nope", qos=1)
        anon.c.publish("test/anon", b"nope0", qos=0)
    client(protocol, auth=PUB).publish("test/anon", b"marker", qos=1)
    assert s.until(b"marker") == []


def test_publish_outside_acl(client, protocol):
    s = client(protocol)
    s.sub("test/#", 1)
    limited = client(protocol, auth=LIMITED)
    assert limited.publish("test/allowed/ok", b"inside", qos=1) == 0
    if protocol == V5:
        assert limited.publish("test/elsewhere", b"outside", qos=1) == 0x87
    else:
        limited.c.publish("test/elsewhere", b"outside", qos=1)
    client(protocol, auth=PUB).publish("test/marker", b"marker", qos=1)
    assert [m.payload for m in s.until(b"marker")] == [b"inside"]


@pytest.mark.parametrize("auth", [("pub", "wrong"), ("nobody", "pub-secret")], ids=["bad-password", "unknown-user"])
def test_bad_credentials_refused(client, protocol, auth):
    c = client(protocol, auth=auth, expect_rc=None)
    # paho reports 3.1.1 return codes 4/5 as the v5 codes 0x86/0x87.
    assert c.connack_rc in (0x86, 0x87), f"CONNACK {c.connack_rc}"


def test_authenticated_user_can_subscribe(client, protocol):
    s = client(protocol, auth=LIMITED)
    s.sub("test/#", 1)
    client(protocol, auth=PUB).publish("test/x", b"hello", qos=1)
    assert s.recv().payload == b"hello"
