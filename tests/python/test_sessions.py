"""Sessions, wills, keepalive and client-id takeover on MQTT 3.1.1 and 5.0 through paho-mqtt."""

import time

from mqtt_helpers import LIMITED, PUB, TIMEOUT, V5, unique_id


def persistent(protocol):
    """Client arguments for a session that outlives the connection: 3.1.1 clean session 0,
    v5 clean start 0 and a Session Expiry Interval."""
    return dict(clean=False, session_expiry=300 if protocol == V5 else None)


def test_session_present_flag(client, protocol):
    cid = unique_id("present")
    c = client(protocol, client_id=cid, **persistent(protocol))
    assert c.session_present is False, "brand-new session reported present"
    c.sub("test/present", 1)
    c.disconnect()
    c.reconnect()
    assert c.session_present is True


def test_offline_messages_delivered_on_reconnect(client, protocol):
    cid = unique_id("offline")
    c = client(protocol, client_id=cid, **persistent(protocol))
    c.sub("test/offline/+", 2)
    c.disconnect()
    pub = client(protocol, auth=PUB)
    pub.publish("test/offline/q1", b"first", qos=1)
    pub.publish("test/offline/q2", b"second", qos=2)
    pub.publish("test/offline/q1", b"third", qos=1)
    c.reconnect()
    assert c.session_present is True
    got = [(m.topic, m.payload, m.qos) for m in (c.recv() for _ in range(3))]
    # Order is guaranteed per topic only.
    assert [g for g in got if g[0] == "test/offline/q1"] == [
        ("test/offline/q1", b"first", 1),
        ("test/offline/q1", b"third", 1),
    ]
    assert ("test/offline/q2", b"second", 2) in got
    # ... and the subscription is live again.
    pub.publish("test/offline/q1", b"live", qos=1)
    assert c.recv().payload == b"live"


def test_unacknowledged_message_redelivered_with_dup(client, protocol):
    cid = unique_id("dup")
    c = client(protocol, client_id=cid, manual_ack=True, **persistent(protocol))
    c.sub("test/dup", 1)
    pub = client(protocol, auth=PUB)
    pub.publish("test/dup", b"unacked", qos=1)
    first = c.recv()
    assert first.payload == b"unacked" and not first.dup
    c.drop()  # no PUBACK sent
    c.reconnect()
    assert c.session_present is True
    again = c.recv()
    assert again.payload == b"unacked"
    assert again.dup, "a redelivered QoS 1 message carries DUP"
    c.ack(again)


def test_clean_session_discards_subscriptions(client, protocol):
    cid = unique_id("clean")
    c = client(protocol, client_id=cid, **persistent(protocol))
    c.sub("test/forgotten", 1)
    c.disconnect()
    fresh = client(protocol, client_id=cid, clean=True)
    assert fresh.session_present is False
    fresh.sub("test/marker", 1)
    pub = client(protocol, auth=PUB)
    pub.publish("test/forgotten", b"old", qos=1)
    pub.publish("test/marker", b"marker", qos=1)
    assert fresh.until(b"marker") == []


def test_will_on_abnormal_close(client, protocol):
    s = client(protocol)
    s.sub("test/will/+", 1)
    w = client(protocol, auth=PUB, will=("test/will/abrupt", b"died", 1, False))
    w.drop()
    msg = s.recv()
    assert (msg.topic, msg.payload, msg.qos) == ("test/will/abrupt", b"died", 1)


def test_no_will_after_normal_disconnect(client, protocol):
    s = client(protocol)
    s.sub("test/will/+", 1)
    w = client(protocol, auth=PUB, will=("test/will/clean", b"must-not", 1, False))
    w.disconnect()
    client(protocol, auth=PUB).publish("test/will/marker", b"marker", qos=1)
    assert s.until(b"marker") == []


def test_anonymous_will_never_published(client, protocol):
    s = client(protocol)
    s.sub("test/will/+", 1)
    w = client(protocol, will=("test/will/anon", b"anonymous", 1, False), expect_rc=None)
    if w.connack_rc == 0:
        w.drop()
    client(protocol, auth=PUB).publish("test/will/marker", b"marker", qos=1)
    assert s.until(b"marker") == []


def test_retained_will(client, protocol):
    w = client(protocol, auth=PUB, will=("test/will/status", b"offline", 1, True))
    w.drop()
    deadline = time.monotonic() + TIMEOUT
    while True:
        s = client(protocol)
        s.sub("test/will/status", 1)
        try:
            msg = s.recv(timeout=1.0)
            # A subscriber that was in place when the will was published gets it live, with
            # retain=0 (as MQTT requires): only a later subscriber proves it was retained.
            if not msg.retain:
                assert time.monotonic() < deadline, "retained will never stored"
                continue
            break
        except AssertionError:
            assert time.monotonic() < deadline, "retained will never stored"
        finally:
            s.close()
    assert (msg.payload, msg.retain) == (b"offline", True)


def test_keepalive_timeout_fires_will(client, protocol):
    s = client(protocol)
    s.sub("test/will/+", 1)
    w = client(protocol, auth=PUB, keepalive=1, will=("test/will/silent", b"timed-out", 0, False))
    w.go_silent()
    # 1.5 x keep alive, with slack for a busy machine.
    msg = s.recv(timeout=TIMEOUT)
    assert (msg.topic, msg.payload) == ("test/will/silent", b"timed-out")


def test_active_client_with_short_keepalive_stays(client, protocol):
    c = client(protocol, keepalive=1)
    c.sub("test/ka", 0)
    time.sleep(3)  # paho pings every second
    pub = client(protocol, auth=PUB)
    pub.publish("test/ka", b"still-here", qos=0)
    assert c.recv().payload == b"still-here"
    assert c.disconnects.empty(), "a pinging client was disconnected"


def test_client_id_takeover(client, protocol):
    cid = unique_id("twin")
    first = client(protocol, client_id=cid)
    second = client(protocol, client_id=cid)
    rc = first.wait_disconnected()
    if protocol == V5:
        assert rc.value == 0x8E, f"first connection closed with {rc}, expected Session taken over"
    second.sub("test/takeover", 1)
    client(protocol, auth=PUB).publish("test/takeover", b"to-second", qos=1)
    assert second.recv().payload == b"to-second"


def test_takeover_keeps_persistent_session(client, protocol):
    cid = unique_id("twin-session")
    first = client(protocol, client_id=cid, **persistent(protocol))
    first.sub("test/takeover/session", 1)
    second = client(protocol, client_id=cid, **persistent(protocol))
    first.wait_disconnected()
    assert second.session_present is True
    client(protocol, auth=PUB).publish("test/takeover/session", b"kept", qos=1)
    assert second.recv().payload == b"kept"


def test_another_identitys_client_id_is_refused(client, protocol):
    """A session belongs to the identity that made it: an anonymous client, or another user,
    with a user's client id is refused (5: 0x85 Client Identifier not valid, 3.1.1: return
    code 2), and the user's connection is neither kicked nor its will published."""
    cid = unique_id("owned")
    watcher = client(protocol)
    watcher.sub("test/owned/will", 1)
    owner = client(protocol, client_id=cid, auth=PUB, will=("test/owned/will", b"gone", 1, False),
                   **persistent(protocol))
    owner.sub("test/owned/data", 1)
    # paho reports the 3.1.1 return code 2 as the v5 code 0x85.
    refused = 0x85
    for auth in (None, LIMITED):
        intruder = client(protocol, client_id=cid, auth=auth, expect_rc=None, **persistent(protocol))
        assert intruder.connack_rc == refused, f"CONNACK {intruder.connack_rc:#04x}"
        assert intruder.session_present is False
    pub = client(protocol, auth=PUB)
    pub.publish("test/owned/data", b"still connected", qos=1)
    assert owner.recv().payload == b"still connected"
    pub.publish("test/owned/will", b"marker", qos=1)
    assert watcher.until(b"marker") == [], "the owner's will was published"


def test_anonymous_sessions_expire_within_the_anonymous_maximum(broker_factory, client, protocol):
    """An anonymous client asking for a week gets `limits.max_anonymous_session_expiry_secs`
    (MQTT 5: the CONNACK says so); a user keeps what it asked."""
    b = broker_factory("[limits]\nmax_anonymous_session_expiry_secs = 60\n")
    anonymous = client(protocol, broker=b, clean=False,
                       session_expiry=604800 if protocol == V5 else None)
    user = client(protocol, broker=b, auth=PUB, clean=False,
                  session_expiry=604800 if protocol == V5 else None)
    if protocol == V5:
        assert anonymous.connack_props.SessionExpiryInterval == 60
        assert not hasattr(user.connack_props, "SessionExpiryInterval"), "granted as asked"
    else:
        assert anonymous.session_present is False and user.session_present is False
