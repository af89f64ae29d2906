#!/bin/sh
# Follow Gerrit events with curl over Server-Sent Events, printing one JSON event per line,
# and resume after the last event printed when restarted (the id is kept in $STATE).
SERVER=${FIREHOSE_URL:-http://localhost:8080}
STATE=${STATE:-./last-event-id}
last=$(cat "$STATE" 2>/dev/null || echo 0)
curl -sSN -H "Last-Event-ID: $last" "$SERVER/api/v1/stream?topic=gerrit/%23" |
while IFS= read -r line; do
  case "$line" in
    data:*) data=${line#data: } ;;
    id:*) id=${line#id: } ;;
    '') if [ -n "$data" ]; then
          printf '%s\n' "$data"
          echo "$id" > "$STATE"        # after the event is handled
        fi
        data= ;;
  esac
done
