#!/bin/sh
# Every Gerrit event with mosquitto_sub, as a persistent MQTT 5 session: the server keeps this
# client id's place in its log (a day for anonymous clients, by default), so a restart receives
# what was published meanwhile. Anonymous clients may resume each other's sessions: set
# CLIENT_ID to something nobody can guess, made once and kept (`openssl rand -hex 16`).
exec mosquitto_sub -h "${FIREHOSE_HOST:-firehose.example.org}" -p "${FIREHOSE_PORT:-1883}" \
  -V mqttv5 -i "${CLIENT_ID:-my-ci-$(hostname)}" -c -x 604800 -q 1 -t 'gerrit/#' -v "$@"
