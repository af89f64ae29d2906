"""Limits that bound what clients can make the broker keep, through paho-mqtt on MQTT 3.1.1 and
5.0: topic depth (`limits.max_topic_levels`), the retained quota
(`limits.max_retained_messages`), and the quotas of anonymous clients (persistent sessions,
filter bytes)."""

import time

from mqtt_helpers import PUB, QUIET, V5, unique_id


def test_topics_deeper_than_the_limit_are_refused(broker_factory, client, protocol):
    b = broker_factory("[limits]\nmax_topic_levels = 4\n")
    s = client(protocol, broker=b)
    s.sub("test/#", 1)
    pub = client(protocol, broker=b, auth=PUB)
    assert pub.publish("test/a/b/c", b"four levels", qos=1) == 0
    # MQTT 5 says why (0x90 Topic Name invalid); 3.1.1 cannot: acknowledged and dropped.
    assert pub.publish("test/a/b/c/d", b"five levels", qos=1) == (0x90 if protocol == V5 else 0)
    pub.publish("test/a/b/c/d", b"five levels at qos 0", qos=0)
    pub.publish("test//b/c/", b"empty levels count", qos=1)

    # Filters: the levels of the filter itself, not of a `$share/<group>/` prefix.
    codes = s.subscribe("test/a/b/+/#", 1)
    assert codes == ([0x8F] if protocol == V5 else [0x80]), f"SUBACK {codes}"
    assert s.subscribe("$share/g/test/a/+/c", 1) == [1]

    # A will on a topic too deep is never published; the one beside it is.
    deep = client(protocol, broker=b, auth=PUB, will=("test/w/x/y/z", b"deep will", 1, False))
    shallow = client(protocol, broker=b, auth=PUB, will=("test/w", b"shallow will", 1, False))
    deep.drop()
    shallow.drop()
    got = [s.recv().payload]
    time.sleep(QUIET)
    pub.publish("test/marker", b"marker", qos=1)
    got += [m.payload for m in s.until(b"marker")]
    assert got == [b"four levels", b"shallow will"]


def retained_now(client, protocol, broker) -> dict[str, bytes]:
    """Every retained message a new subscriber gets, the broker's `$SYS` ones included."""
    s = client(protocol, broker=broker)
    s.sub("#", 1)
    s.sub("$SYS/#", 0)
    client(protocol, broker=broker, auth=PUB).publish("test/quota/marker", b"marker", qos=1)
    return {m.topic: m.payload for m in s.until(b"marker") if m.retain}


def test_retained_messages_beyond_the_quota_are_refused(broker_factory, client, protocol):
    limit = 40
    b = broker_factory(f"[limits]\nmax_retained_messages = {limit}\n")
    # The broker's own retained statistics count too: wait until they are all in place (this
    # is the last of them).
    sys = client(protocol, broker=b)
    sys.sub("$SYS/broker/protocol/errors", 0)
    sys.recv()
    live = client(protocol, broker=b)
    live.sub("test/quota/#", 1)
    pub = client(protocol, broker=b, auth=PUB)

    codes = [pub.publish(f"test/quota/{i}", f"v{i}", qos=1, retain=True) for i in range(limit)]
    kept = retained_now(client, protocol, b)
    assert len(kept) == limit, sorted(kept)
    accepted = [i for i in range(limit) if f"test/quota/{i}" in kept]
    refused = [i for i in range(limit) if f"test/quota/{i}" not in kept]
    assert refused and accepted == list(range(len(accepted))), (accepted, refused)
    if protocol == V5:
        assert codes == [0] * len(accepted) + [0x97] * len(refused), codes
    assert [m.payload for m in live.until(b"marker")] == [f"v{i}".encode() for i in accepted], (
        "a refused retained message was delivered"
    )

    # Replacing (larger too) and clearing always pass; a clear makes room for a new topic.
    last, first_refused = accepted[-1], refused[0]
    assert pub.publish(f"test/quota/{last}", b"replaced, larger", qos=1, retain=True) == 0
    v5_refusal = 0x97 if protocol == V5 else 0
    assert pub.publish(f"test/quota/{first_refused}", b"no", qos=1, retain=True) == v5_refusal
    assert pub.publish("test/quota/0", b"", qos=1, retain=True) == 0
    assert pub.publish(f"test/quota/{first_refused}", b"room", qos=1, retain=True) == 0
    kept = retained_now(client, protocol, b)
    assert len(kept) == limit, sorted(kept)
    assert "test/quota/0" not in kept
    assert kept[f"test/quota/{last}"] == b"replaced, larger"
    assert kept[f"test/quota/{first_refused}"] == b"room"
    # Messages that are not retained are never limited.
    assert pub.publish("test/quota/not-retained", b"live only", qos=1) == 0


def test_anonymous_persistent_sessions_beyond_the_quota_are_refused(broker_factory, client, protocol):
    """Beyond `max_anonymous_sessions_per_ip`, a new anonymous persistent session is refused
    (5: 0x97 Quota exceeded, 3.1.1: return code 3); clean sessions and users still connect."""
    b = broker_factory("[limits]\nmax_anonymous_sessions_per_ip = 2\n")
    expiry = 300 if protocol == V5 else None
    for _ in range(2):
        client(protocol, broker=b, client_id=unique_id("anon"), clean=False, session_expiry=expiry)
    extra = client(protocol, broker=b, client_id=unique_id("anon"), clean=False,
                   session_expiry=expiry, expect_rc=None)
    # paho reports the 3.1.1 return code 3 (server unavailable) as the v5 code 0x88.
    assert extra.connack_rc == (0x97 if protocol == V5 else 0x88), f"{extra.connack_rc:#04x}"
    client(protocol, broker=b)
    client(protocol, broker=b, auth=PUB, clean=False, session_expiry=expiry)


def test_anonymous_filters_beyond_their_quota_are_refused(broker_factory, client, protocol):
    """A filter of an anonymous client charged more than `max_anonymous_filter_bytes` (three
    times its length and 512 bytes per level and once more) gets SUBACK 0x97 (3.1.1: 0x80); a
    user's is not limited."""
    b = broker_factory("[limits]\nmax_anonymous_filter_bytes = 3000\n")
    anonymous = client(protocol, broker=b)
    assert anonymous.subscribe("test/a/b/c/d", 1) == [0x97 if protocol == V5 else 0x80]
    assert anonymous.subscribe("test/a", 1) == [1]
    user = client(protocol, broker=b, auth=PUB)
    assert user.subscribe("test/a/b/c/d", 1) == [1]
