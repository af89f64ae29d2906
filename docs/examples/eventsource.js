// Every Gerrit event in the browser with EventSource (Server-Sent Events, no library). After a
// network error EventSource reconnects by itself and sends the id of the last event it got
// (Last-Event-ID): the server resumes after it, nothing missed, nothing repeated.
// The history API allows every origin (CORS): this page may be served from anywhere.
const FIREHOSE = 'https://firehose.example.org';
const events = new EventSource(`${FIREHOSE}/api/v1/stream?topic=gerrit/%23`);
events.onmessage = (m) => console.log(JSON.parse(m.data)); // {id, time, topic, payload, ...}
