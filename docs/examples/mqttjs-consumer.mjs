// Every Gerrit event with MQTT.js (npm `mqtt`) in Node, as a persistent MQTT 5 session over
// secure WebSocket: the server keeps this client id's place in its log (a day for anonymous
// clients, by default), so a restart receives what was published meanwhile, and nothing twice.
// Anonymous clients may resume each other's sessions: use a client id nobody can guess.
//
//     npm install mqtt
//     node mqttjs-consumer.mjs [URL [COUNT]]     # URL: wss://firehose.example.org/mqtt
import mqtt from 'mqtt';

const url = process.argv[2] ?? 'wss://firehose.example.org/mqtt';
const count = Number(process.argv[3] ?? Infinity); // exit after this many messages
let seen = 0;

const client = mqtt.connect(url, {
  clientId: 'my-bot', clean: false, protocolVersion: 5,
  properties: { sessionExpiryInterval: 604800 },
});
client.on('connect', () => client.subscribe('gerrit/#', { qos: 1 }));
client.on('message', (topic, payload) => {
  console.log(topic, payload.toString());
  // MQTT.js acknowledges the message (PUBACK) when this handler returns: end only after that,
  // or the server sends it again next time.
  if (++seen === count) setImmediate(() => client.end());
});
client.on('error', (e) => console.error(e.message));
