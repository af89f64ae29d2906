"""Every Gerrit comment-added event, with paho-mqtt 2.x, as a persistent session: a restart
receives what was missed. Each message is acknowledged only after it was handled
(manual_ack), so a crash mid-way gets it again instead of losing it.

    python3 consumer.py HOST PORT [COUNT]
"""

import json
import sys

import paho.mqtt.client as mqtt

host, port = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else None
seen = 0


def handle(event: dict) -> None:
    print(json.dumps(event), flush=True)


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("gerrit/+/+/comment-added", qos=1)


def on_message(client, userdata, msg):
    global seen
    handle({"topic": msg.topic, "payload": json.loads(msg.payload)})
    client.ack(msg.mid, msg.qos)  # only now: the event is done
    seen += 1
    if count is not None and seen >= count:
        client.disconnect()


client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="my-ci-consumer",  # anonymous sessions are shared: use an id nobody can guess
    protocol=mqtt.MQTTv5,
    manual_ack=True,
)
client.on_connect = on_connect
client.on_message = on_message
props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
props.SessionExpiryInterval = 7 * 24 * 3600  # keep the session a week while away
client.connect(host, port, clean_start=False, properties=props)
client.loop_forever()
