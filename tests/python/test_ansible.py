"""The Ansible callback plugin (integrations/ansible/firehose.py) with a real `ansible-playbook`
(ansible-core from PyPI, in the test venv) against localhost, publishing to a real Firehose over
HTTP with basic auth; the events are read back from the history API. When Firehose cannot be
reached, the playbook still succeeds and the plugin warns once.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import REPO, firehose_bin, hash_password, terminate

PLUGIN_DIR = REPO / "integrations" / "ansible"
USER, PASSWORD = "ansible", "ansible secret"
HTTP_BOUND = re.compile(r"HTTP listener bound addr=(\S+)")
TIMEOUT = 10.0


def ansible_playbook() -> str:
    path = pathlib.Path(sys.executable).parent / "ansible-playbook"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/test-bridges2 (INSTALL_ONLY=1) first")
    return str(path)


class HttpFirehose:
    """`firehose serve` with HTTP on a free loopback port and a users file with `ansible`."""

    def __init__(self, workdir: pathlib.Path, config: str = ""):
        workdir.mkdir(parents=True, exist_ok=True)
        extra = []
        if config:
            (workdir / "firehose.toml").write_text(config)
            extra = ["--config", str(workdir / "firehose.toml")]
        users = workdir / "users.toml"
        users.write_text(
            "[[user]]\n"
            f'name = "{USER}"\n'
            f'password = "{hash_password(PASSWORD)}"\n'
            'publish = ["ansible/#"]\n'
        )
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("FIREHOSE_")}
        self.proc = subprocess.Popen(
            [
                firehose_bin(), "serve", "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
                "--data-dir", str(workdir / "data"), "--users", str(users), *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url = None
        bound = threading.Event()

        def read_log():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = HTTP_BOUND.search(line)
                if m and not bound.is_set():
                    self.url = "http://" + m.group(1).strip('"')
                    bound.set()

        threading.Thread(target=read_log, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        while not bound.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail("firehose serve did not log its HTTP address:\n" + "".join(self.lines))

    def events(self, topic_filter: str) -> list[tuple[str, dict]]:
        query = urllib.parse.urlencode({"topic": topic_filter, "limit": 500})
        with urllib.request.urlopen(f"{self.url}/api/v1/events?{query}", timeout=TIMEOUT) as r:
            page = json.load(r)
        out = []
        for event in page["events"]:
            payload = event["payload"]
            out.append((event["topic"], json.loads(payload) if isinstance(payload, str) else payload))
        return out

    def stop(self) -> int:
        terminate(self.proc)
        return self.proc.returncode


@pytest.fixture
def firehose(tmp_path, request):
    server = HttpFirehose(tmp_path / "firehose", getattr(request, "param", ""))
    yield server
    status = server.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("---- firehose serve log ----\n" + "".join(server.lines))
    assert status == 0, "firehose serve did not exit cleanly:\n" + "".join(server.lines)


PLAYBOOK = """
- name: firehose test play
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: say hello
      command: echo hello
    - name: fail but carry on
      command: /bin/false
      ignore_errors: true
    - name: done
      debug:
        msg: done
"""

FAILING = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: this fails
      command: /bin/false
"""


def run_playbook(workdir: pathlib.Path, url: str, playbook: str, env_extra: dict, ini_extra: str = ""):
    """Writes ansible.cfg (with `url` and `ini_extra` in [callback_firehose]), an inventory and
    the playbook, runs ansible-playbook; returns the CompletedProcess."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "inventory").write_text("localhost ansible_connection=local\n")
    (workdir / "site.yml").write_text(playbook)
    (workdir / "ansible.cfg").write_text(
        "[defaults]\n"
        "callbacks_enabled = firehose\n"
        f"callback_plugins = {PLUGIN_DIR}\n"
        "inventory = inventory\n"
        "interpreter_python = auto_silent\n"
        "[callback_firehose]\n"
        f"url = {url}\n"
        "timeout = 3\n" + ini_extra
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIREHOSE_", "ANSIBLE_"))}
    env.update(
        ANSIBLE_CONFIG=str(workdir / "ansible.cfg"),
        ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
        ANSIBLE_HOME=str(workdir / "home"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        LC_ALL="C.UTF-8",
        **env_extra,
    )
    return subprocess.run(
        [ansible_playbook(), "site.yml"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )


def wait_events(firehose: HttpFirehose, n: int) -> list[tuple[str, dict]]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        events = firehose.events("ansible/#")
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_playbook_run_is_published(firehose, tmp_path):
    # URL from ansible.cfg, credentials from the environment.
    out = run_playbook(
        tmp_path / "run", firehose.url, PLAYBOOK,
        {"FIREHOSE_USER": USER, "FIREHOSE_PASSWORD": PASSWORD},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Firehose" not in out.stdout + out.stderr, out.stdout + out.stderr

    events = wait_events(firehose, 6)
    topics = [t for t, _ in events]
    session = topics[0].split("/")[2]
    prefix = f"ansible/playbook/{session}"
    assert topics == [
        f"{prefix}/action/start",
        f"{prefix}/task/localhost/OK",
        f"{prefix}/task/localhost/FAILED",
        f"{prefix}/task/localhost/OK",
        f"{prefix}/stats/localhost",
        f"{prefix}/action/finish/OK",
    ], topics
    payloads = [p for _, p in events]
    for p in payloads:
        assert p["session"] == session
        assert p["playbook_id"] == session
        assert p["playbook_name"] == "site.yml"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", p["timestamp"]), p
    start, hello, failed, done, stats, finish = payloads
    assert (start["ansible_type"], start["status"]) == ("start", "OK")
    assert hello["ansible_task"] == "say hello"
    assert hello["ansible_result"]["stdout"] == "hello"
    assert hello["changed"] is True
    assert failed["ansible_task"] == "fail but carry on"
    assert failed["ignore_errors"] is True
    assert failed["ansible_result"]["rc"] == 1
    assert done["ansible_result"]["msg"] == "done"
    assert stats["ansible_host"] == "localhost"
    assert stats["stats"]["ok"] == 3
    assert stats["stats"]["failures"] == 0
    assert stats["stats"]["ignored"] == 1
    assert (finish["ansible_type"], finish["status"]) == ("finish", "OK")

    # A failing playbook, credentials from ansible.cfg this time: finish/FAILED.
    out = run_playbook(
        tmp_path / "failing", firehose.url, FAILING, {},
        ini_extra=f"user = {USER}\npassword = {PASSWORD}\n",
    )
    assert out.returncode == 2, out.stdout + out.stderr
    events = wait_events(firehose, 10)
    topics = [t for t, _ in events[6:]]
    session2 = topics[0].split("/")[2]
    assert session2 != session
    prefix = f"ansible/playbook/{session2}"
    assert topics == [
        f"{prefix}/action/start",
        f"{prefix}/task/localhost/FAILED",
        f"{prefix}/stats/localhost",
        f"{prefix}/action/finish/FAILED",
    ], topics
    assert events[-2][1]["stats"]["failures"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_firehose_only_warns(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    out = run_playbook(
        tmp_path / "run", url, PLAYBOOK, {"FIREHOSE_USER": USER, "FIREHOSE_PASSWORD": PASSWORD}
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "ok=3" in text, text
    assert text.count(f"Firehose at {url} is unreachable") == 1, text


def test_refused_credentials_only_warn(firehose, tmp_path):
    out = run_playbook(
        tmp_path / "run", firehose.url, PLAYBOOK,
        {"FIREHOSE_USER": USER, "FIREHOSE_PASSWORD": "wrong"},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "HTTP 401" in text, text
    assert firehose.events("ansible/#") == []


BIG_RESULT = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: small
      debug:
        msg: small
    - name: big
      debug:
        msg: "{{ 'x' * 20000 }}"
    - name: after
      debug:
        msg: after
"""


@pytest.mark.parametrize("firehose", ["[limits]\nmax_packet_size = 4096\n"], indirect=True)
def test_a_result_too_large_is_published_without_it(firehose, tmp_path):
    """Issue 27: a task result over Firehose's limit (413) no longer stops the run's events:
    the task is published without its result, with the result's size."""
    out = run_playbook(
        tmp_path / "run", firehose.url, BIG_RESULT,
        {"FIREHOSE_USER": USER, "FIREHOSE_PASSWORD": PASSWORD},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "not published" not in text, text
    events = wait_events(firehose, 6)
    kinds = [(p["ansible_type"], p.get("ansible_task")) for _, p in events]
    assert kinds == [
        ("start", None), ("task", "small"), ("task", "big"), ("task", "after"),
        ("stats", None), ("finish", None),
    ], kinds
    big = events[2][1]
    assert big["status"] == "OK"
    assert big["ansible_result"] == {}
    assert big["ansible_result_omitted_bytes"] > 20000, big
    assert events[1][1]["ansible_result"]["msg"] == "small"


@pytest.mark.parametrize("firehose", ["[limits]\nmax_topic_levels = 5\n"], indirect=True)
def test_refused_events_are_skipped_and_counted(firehose, tmp_path):
    """Issue 27: an event Firehose refuses (here: topics deeper than max_topic_levels, 400) is
    skipped with one warning, the rest of the run is still published, and the end of the run
    says how many events were not."""
    out = run_playbook(
        tmp_path / "run", firehose.url, PLAYBOOK,
        {"FIREHOSE_USER": USER, "FIREHOSE_PASSWORD": PASSWORD},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert text.count("HTTP 400") == 1, text
    # Three tasks and the finish have six levels; start and stats have five.
    assert "4 of the 6 events of this run were not published to Firehose" in text, text
    events = wait_events(firehose, 2)
    assert [p["ansible_type"] for _, p in events] == ["start", "stats"], events
