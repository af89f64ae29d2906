#!/bin/sh
# Run a CI job for every Gerrit comment that starts with "recheck" on one project, and never
# miss or repeat one across restarts: the resume file remembers the last event done.
# FIREHOSE_SERVER: an http(s):// (Server-Sent Events) or mqtt(s)://, ws(s):// URL. The job gets
# the event JSON on stdin, FIREHOSE_TOPIC and FIREHOSE_EVENT_ID in its environment.
exec firehose sub --server "${FIREHOSE_SERVER:-https://firehose.example.org}" \
  'gerrit/openstack/nova/comment-added' \
  --filter 'comment~(?m)^recheck' \
  --resume-file "${RESUME_FILE:-$HOME/.cache/firehose-recheck.json}" \
  --exec "${JOB:-./run-ci-job.sh}" \
  "$@"
