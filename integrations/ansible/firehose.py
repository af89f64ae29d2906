# Firehose callback plugin for Ansible: publishes playbook runs to a Firehose event log.
# Licensed under the Apache License, Version 2.0 (the project's licence).
"""Publishes a playbook run to Firehose over HTTP (``POST /api/v1/publish/<topic>``).

Topics, as the original OpenStack Firehose's Ansible plugin published them (``<prefix>`` is
``ansible`` unless ``topic_prefix`` says otherwise):

- ``<prefix>/playbook/<uuid>/action/start`` when the playbook starts;
- ``<prefix>/playbook/<uuid>/task/<host>/<OK|FAILED|UNREACHABLE>`` for each task result;
- ``<prefix>/playbook/<uuid>/stats/<host>`` with each host's recap;
- ``<prefix>/playbook/<uuid>/action/finish/<OK|FAILED>`` when it ends.

The plugin never fails a playbook, and never drops an event without saying so:

- when Firehose cannot be reached, or refuses the credentials (401, 403), it prints one
  warning and publishes nothing more for that run (each later event would wait or fail the
  same way);
- a task result larger than Firehose accepts (413) is published without its result
  (``ansible_result`` empty, ``ansible_result_omitted_bytes`` its size), so that the task's
  status still arrives;
- an event Firehose refuses for any other reason (400, 503, 507) is skipped with a warning
  (the first one) and the run goes on;
- at the end of the run, a warning counts the events that were not published.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: firehose
type: notification
short_description: publish playbook runs to Firehose
description:
  - Publishes playbook start and finish, each task result and each host's recap to a Firehose
    server over its HTTP publish API, as JSON with a timestamp.
  - Never fails a playbook; when Firehose is unreachable it warns once and stops publishing.
requirements:
  - enable in ansible.cfg (C(callbacks_enabled = firehose)) with the plugin in a callback_plugins
    directory
options:
  url:
    description: Firehose's HTTP base URL, e.g. C(https://firehose.example.org).
    env:
      - name: FIREHOSE_URL
    ini:
      - section: callback_firehose
        key: url
    default: http://127.0.0.1:8080
  user:
    description: a user of Firehose's users file allowed to publish under topic_prefix.
    env:
      - name: FIREHOSE_USER
    ini:
      - section: callback_firehose
        key: user
  password:
    description: that user's password.
    env:
      - name: FIREHOSE_PASSWORD
    ini:
      - section: callback_firehose
        key: password
  topic_prefix:
    description: first topic level(s).
    env:
      - name: FIREHOSE_TOPIC_PREFIX
    ini:
      - section: callback_firehose
        key: topic_prefix
    default: ansible
  timeout:
    description: seconds to wait for each publish.
    type: float
    env:
      - name: FIREHOSE_TIMEOUT
    ini:
      - section: callback_firehose
        key: timeout
    default: 5
"""


def _level(name: str) -> str:
    """A host name as one topic level: no separators or wildcards, never empty."""
    cleaned = "".join(
        "_" if c in "/+#" or ord(c) < 32 or 127 <= ord(c) < 160 else c for c in str(name).strip()
    )
    return cleaned or "-"


def _now() -> str:
    return (
        datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class CallbackModule(CallbackBase):
    """Publishes playbook events to Firehose."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "firehose"
    CALLBACK_NEEDS_ENABLED = True
    CALLBACK_NEEDS_WHITELIST = True  # ansible < 2.11

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.session = str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.playbook_name = None
        self.playbook_path = None
        self.disabled = False
        self.url = None
        self.auth = None
        self.prefix = "ansible"
        self.timeout = 5.0
        self.published = 0
        self.dropped = 0
        self.warned_skip = False

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.url = (self.get_option("url") or "").rstrip("/")
        user, password = self.get_option("user"), self.get_option("password")
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.auth = f"Basic {token}"
        self.prefix = (self.get_option("topic_prefix") or "ansible").strip("/")
        self.timeout = float(self.get_option("timeout") or 5)

    # -- publishing --------------------------------------------------------------------------

    def _publish(self, suffix: str, payload: dict) -> None:
        if self.disabled:
            self.dropped += 1
            return
        topic = f"{self.prefix}/playbook/{self.session}/{suffix}"
        payload = dict(payload, session=self.session, timestamp=_now())
        body = json.dumps(payload, default=str, sort_keys=True).encode()
        status, detail = self._post(topic, body)
        if status == 413 and "ansible_result" in payload:
            # Too large for Firehose: the task's status matters more than its output.
            payload = dict(payload, ansible_result={}, ansible_result_omitted_bytes=len(body))
            body = json.dumps(payload, default=str, sort_keys=True).encode()
            status, detail = self._post(topic, body)
        if status is None:
            self.published += 1
        elif status in (0, 401, 403):
            self.dropped += 1
            self._give_up(detail)
        else:
            self.dropped += 1
            if not self.warned_skip:
                self.warned_skip = True
                self._display.warning(f"{detail}; this event is not published to Firehose")

    def _post(self, topic: str, body: bytes):
        """POSTs one event: (None, None) once it is stored, else (HTTP status, or 0 when
        Firehose cannot be reached, and what went wrong)."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/publish/{urllib.parse.quote(topic, safe='/')}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.auth:
            request.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
            return None, None
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace").strip()
            return e.code, f"Firehose refused {topic}: HTTP {e.code} {detail}"
        except Exception as e:  # noqa: BLE001 -- never let a publish fail the playbook
            return 0, f"Firehose at {self.url} is unreachable ({e})"

    def _give_up(self, why: str) -> None:
        self.disabled = True
        self._display.warning(f"{why}; no more events of this run are published to Firehose")

    def _report_dropped(self) -> None:
        if self.dropped:
            total = self.published + self.dropped
            self._display.warning(
                f"{self.dropped} of the {total} events of this run were not published to Firehose"
            )

    def _base(self) -> dict:
        return {
            "host": self.hostname,
            "playbook_id": self.session,
            "playbook_name": self.playbook_name,
            "playbook_path": self.playbook_path,
        }

    # -- callbacks ---------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        path = getattr(playbook, "_file_name", None)
        self.playbook_path = os.path.abspath(path) if path else None
        self.playbook_name = os.path.basename(path) if path else None
        self._publish(
            "action/start",
            dict(self._base(), status="OK", ansible_type="start"),
        )

    def _task(self, result, status: str, **extra) -> None:
        host = result._host.get_name()
        try:
            details = json.loads(self._dump_results(result._result))
        except Exception:  # noqa: BLE001 -- a result that does not serialise is still an event
            details = {"msg": str(result._result.get("msg", ""))}
        self._publish(
            f"task/{_level(host)}/{status}",
            dict(
                self._base(),
                status=status,
                ansible_type="task",
                ansible_host=host,
                ansible_task=result._task.get_name(),
                ansible_result=details,
                **extra,
            ),
        )

    def v2_runner_on_ok(self, result):
        self._task(result, "OK", changed=bool(result._result.get("changed", False)))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._task(result, "FAILED", ignore_errors=bool(ignore_errors))

    def v2_runner_on_unreachable(self, result):
        self._task(result, "UNREACHABLE")

    def v2_playbook_on_stats(self, stats):
        failed = False
        for host in sorted(stats.processed.keys()):
            summary = stats.summarize(host)
            if summary.get("failures") or summary.get("unreachable"):
                failed = True
            self._publish(
                f"stats/{_level(host)}",
                dict(self._base(), ansible_type="stats", ansible_host=host, stats=summary),
            )
        status = "FAILED" if failed else "OK"
        self._publish(
            f"action/finish/{status}",
            dict(self._base(), status=status, ansible_type="finish"),
        )
        self._report_dropped()
