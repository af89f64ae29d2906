"""MQTT 5 features through paho-mqtt: properties, subscription options and identifiers, topic
aliases, expiry, will delay, server-assigned identifiers, flow control."""

import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_helpers import PUB, QUIET, TIMEOUT, V5, props, publish_props, unique_id


def test_publish_properties_pass_through(client):
    s = client(V5)
    s.sub("test/props", 1)
    pub = client(V5, auth=PUB)
    pp = publish_props(
        PayloadFormatIndicator=1,
        ContentType="application/json",
        ResponseTopic="test/reply/42",
        CorrelationData=b"\x00\x01req-42",
        UserProperty=[("trace", "abc"), ("hop", "1"), ("trace", "def")],
    )
    pub.publish("test/props", b'{"x": 1}', qos=1, properties=pp)
    msg = s.recv()
    p = msg.properties
    assert p.PayloadFormatIndicator == 1
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == "test/reply/42"
    assert p.CorrelationData == b"\x00\x01req-42"
    assert p.UserProperty == [("trace", "abc"), ("hop", "1"), ("trace", "def")], "order kept"


def test_request_response(client):
    responder = client(V5, auth=PUB)
    responder.sub("test/service/request", 1)
    requester = client(V5, auth=PUB)
    requester.sub("test/service/reply/me", 1)
    requester.publish("test/service/request", b"ping", qos=1, properties=publish_props(
        ResponseTopic="test/service/reply/me", CorrelationData=b"id-7"))
    req = responder.recv()
    responder.publish(req.properties.ResponseTopic, b"pong", qos=1,
                      properties=publish_props(CorrelationData=req.properties.CorrelationData))
    rep = requester.recv()
    assert (rep.payload, rep.properties.CorrelationData) == (b"pong", b"id-7")


def test_subscription_identifiers(client):
    s = client(V5)
    assert s.subscribe("test/subid/#", 1,
                       properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=11)) == [1]
    assert s.subscribe("test/+/only", 1,
                       properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=22)) == [1]
    assert s.subscribe("test/marker", 1) == [1]
    pub = client(V5, auth=PUB)
    pub.publish("test/subid/x", b"one-sub", qos=1)
    pub.publish("test/subid/only", b"two-subs", qos=1)
    pub.publish("test/marker", b"marker", qos=1)
    got = s.until(b"marker")
    one = [m for m in got if m.payload == b"one-sub"]
    assert len(one) == 1 and one[0].properties.SubscriptionIdentifier == [11]
    ids = set()
    for m in got:
        if m.payload == b"two-subs":
            ids.update(m.properties.SubscriptionIdentifier)
    assert ids == {11, 22}
    # A message through a subscription without identifier carries none.
    pub.publish("test/marker", b"plain", qos=1)
    plain = s.recv()
    assert not hasattr(plain.properties, "SubscriptionIdentifier") or not plain.properties.SubscriptionIdentifier


def test_no_local(client):
    me = client(V5, auth=PUB)
    assert me.subscribe("test/chat", options=SubscribeOptions(qos=1, noLocal=True)) == [1]
    me.sub("test/marker", 1)
    other = client(V5, auth=PUB)
    me.publish("test/chat", b"mine", qos=1)
    other.publish("test/chat", b"theirs", qos=1)
    other.publish("test/marker", b"marker", qos=1)
    assert [m.payload for m in me.until(b"marker")] == [b"theirs"]


def test_retain_as_published(client):
    rap = client(V5)
    assert rap.subscribe("test/rap", options=SubscribeOptions(qos=1, retainAsPublished=True)) == [1]
    plain = client(V5)
    assert plain.subscribe("test/rap", options=SubscribeOptions(qos=1, retainAsPublished=False)) == [1]
    client(V5, auth=PUB).publish("test/rap", b"r", qos=1, retain=True)
    assert rap.recv().retain is True, "Retain As Published keeps the flag on live delivery"
    assert plain.recv().retain is False


def test_retain_handling(client):
    pub = client(V5, auth=PUB)
    pub.publish("test/rh/x", b"stored", qos=1, retain=True)
    results = {}
    for rh in (0, 1, 2):
        s = client(V5)
        opts = SubscribeOptions(qos=1, retainHandling=rh)
        s.subscribe("test/rh/#", options=opts)
        s.sub("test/rh-marker", 1)
        pub.publish("test/rh-marker", b"marker", qos=1)
        first = [m.payload for m in s.until(b"marker")]
        # Subscribe again to the same filter: the subscription already exists now.
        s.subscribe("test/rh/#", options=opts)
        pub.publish("test/rh-marker", b"marker", qos=1)
        second = [m.payload for m in s.until(b"marker")]
        results[rh] = (first, second)
    assert results[0] == ([b"stored"], [b"stored"]), "0: send retained at every subscribe"
    assert results[1] == ([b"stored"], []), "1: only if the subscription is new"
    assert results[2] == ([], []), "2: never"


def test_topic_alias_from_client(client):
    s = client(V5)
    s.sub("test/alias/long/topic/name", 1)
    pub = client(V5, auth=PUB)
    maximum = getattr(pub.connack_props, "TopicAliasMaximum", 0)
    assert maximum >= 1, f"CONNACK Topic Alias Maximum {maximum}"
    pub.publish("test/alias/long/topic/name", b"set", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"use", qos=1, properties=publish_props(TopicAlias=1))
    for payload in (b"set", b"use"):
        msg = s.recv()
        assert (msg.topic, msg.payload) == ("test/alias/long/topic/name", payload)


def test_topic_alias_remapped(client):
    s = client(V5)
    s.sub("test/alias/+", 1)
    pub = client(V5, auth=PUB)
    pub.publish("test/alias/a", b"1", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish("test/alias/b", b"2", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish("", b"3", qos=1, properties=publish_props(TopicAlias=1))
    got = [(m.topic, m.payload) for m in (s.recv(), s.recv(), s.recv())]
    assert got == [("test/alias/a", b"1"), ("test/alias/b", b"2"), ("test/alias/b", b"3")]


def test_message_expiry_for_offline_session(client):
    cid = unique_id("expiry")
    c = client(V5, client_id=cid, clean=False, session_expiry=300)
    c.sub("test/expiry", 1)
    c.disconnect()
    pub = client(V5, auth=PUB)
    pub.publish("test/expiry", b"short-lived", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("test/expiry", b"long-lived", qos=1, properties=publish_props(MessageExpiryInterval=600))
    pub.publish("test/expiry", b"forever", qos=1)
    time.sleep(3)  # the 1 s expiry must pass while the client is away
    c.reconnect()
    assert c.session_present
    got = [c.recv() for _ in range(2)]
    assert [m.payload for m in got] == [b"long-lived", b"forever"]
    remaining = got[0].properties.MessageExpiryInterval
    assert 0 < remaining <= 600, "expiry interval is forwarded, reduced by the time waited"
    assert remaining < 600, "expiry interval not reduced after 3 s offline"
    c.expect_nothing()


def test_retained_message_expiry(client):
    pub = client(V5, auth=PUB)
    pub.publish("test/retexp/a", b"short", qos=1, retain=True,
                properties=publish_props(MessageExpiryInterval=1))
    pub.publish("test/retexp/b", b"long", qos=1, retain=True,
                properties=publish_props(MessageExpiryInterval=600))
    time.sleep(3)
    s = client(V5)
    s.sub("test/retexp/+", 1)
    s.sub("test/marker", 1)
    pub.publish("test/marker", b"marker", qos=1)
    assert [m.payload for m in s.until(b"marker")] == [b"long"]


def test_session_expiry(client):
    short = client(V5, client_id=unique_id("short"), clean=False, session_expiry=1)
    short.sub("test/se", 1)
    short.disconnect()
    longer = client(V5, client_id=unique_id("long"), clean=False, session_expiry=600)
    longer.sub("test/se", 1)
    longer.disconnect()
    time.sleep(3)
    short.reconnect()
    assert short.session_present is False, "session outlived its 1 s expiry"
    longer.reconnect()
    assert longer.session_present is True


def test_session_expiry_set_on_disconnect(client):
    probe = client(V5)
    probe.sub("$SYS/broker/clients/connected", 0)
    c = client(V5, client_id=unique_id("se-disc"), clean=False, session_expiry=600)
    c.sub("test/se", 1)
    # A DISCONNECT may shorten the expiry to 0: the session ends now.
    c.c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    c.wait_disconnected()
    # paho closes its socket right after sending DISCONNECT: a reconnect at once could reach
    # the broker before the old connection's DISCONNECT is read, and take the session over
    # instead. Wait until the broker counts only the probe.
    probe.until(b"1")
    c.reconnect()
    assert c.session_present is False


def test_server_assigned_client_id(client):
    c = client(V5, client_id="")
    assigned = getattr(c.connack_props, "AssignedClientIdentifier", "")
    assert assigned, "no Assigned Client Identifier in CONNACK"
    other = client(V5, client_id="")
    assert other.connack_props.AssignedClientIdentifier != assigned
    c.sub("test/assigned", 0)  # still connected, not taken over


def test_will_delay_cancelled_by_reconnect(client):
    s = client(V5)
    s.sub("test/will/+", 1)
    cid = unique_id("delayed")
    w = client(V5, client_id=cid, auth=PUB, clean=False, session_expiry=60,
               will=("test/will/delayed", b"should-not", 1, False),
               will_props=props(PacketTypes.WILLMESSAGE, WillDelayInterval=4))
    w.drop()
    w.reconnect()
    # Past the 4 s delay: had the will been kept, it would be out by now.
    time.sleep(6)
    client(V5, auth=PUB).publish("test/will/marker", b"marker", qos=1)
    assert s.until(b"marker") == []


def test_will_delay_elapses(client):
    s = client(V5)
    s.sub("test/will/+", 1)
    w = client(V5, auth=PUB, clean=False, session_expiry=60,
               will=("test/will/late", b"late", 1, False),
               will_props=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1))
    w.drop()
    # Not at once (a busy machine can only make it later) ...
    s.expect_nothing(0.3)
    # ... but after about a second.
    assert s.recv(timeout=TIMEOUT).payload == b"late"


def test_will_properties_pass_through(client):
    s = client(V5)
    s.sub("test/will/+", 1)
    w = client(V5, auth=PUB, will=("test/will/props", b"{}", 1, False),
               will_props=props(PacketTypes.WILLMESSAGE, ContentType="application/json",
                                UserProperty=[("node", "n1")]))
    w.drop()
    msg = s.recv()
    assert msg.properties.ContentType == "application/json"
    assert msg.properties.UserProperty == [("node", "n1")]


def test_disconnect_with_will_message(client):
    s = client(V5)
    s.sub("test/will/+", 1)
    w = client(V5, auth=PUB, will=("test/will/asked", b"on-purpose", 1, False))
    w.disconnect(reason=0x04)
    assert s.recv().payload == b"on-purpose"


def test_client_receive_maximum(client):
    c = client(V5, manual_ack=True, connect_props={"ReceiveMaximum": 3})
    c.sub("test/flow", 1)
    pub = client(V5, auth=PUB)
    for i in range(10):
        pub.publish("test/flow", f"f{i}", qos=1)
    window = [c.recv() for _ in range(3)]
    c.expect_nothing()
    seen = [m.payload for m in window]
    while len(seen) < 10:
        c.ack(window.pop(0))
        m = c.recv()
        window.append(m)
        seen.append(m.payload)
        assert len(window) <= 3
    assert seen == [f"f{i}".encode() for i in range(10)]
    for m in window:
        c.ack(m)


def test_client_maximum_packet_size(client):
    c = client(V5, connect_props={"MaximumPacketSize": 200})
    c.sub("test/size", 1)
    pub = client(V5, auth=PUB)
    pub.publish("test/size", b"x" * 500, qos=1)
    pub.publish("test/size", b"fits", qos=1)
    assert c.recv().payload == b"fits"
    assert c.disconnects.empty()


def test_suback_reason_for_bad_filter(client):
    c = client(V5)
    # A shared subscription with an empty group name is invalid: refused in SUBACK or by
    # closing the connection, never granted.
    try:
        codes = c.subscribe("$share//test", 1)
    except AssertionError:
        return
    assert codes[0] >= 0x80, f"SUBACK {codes}"


def test_takeover_reason_code(client):
    cid = unique_id("taken")
    first = client(V5, client_id=cid)
    client(V5, client_id=cid)
    assert first.wait_disconnected().value == 0x8E
