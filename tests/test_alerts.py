"""Alert episodes, and webhook delivery against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lakehouse.alerts import (
    Delivery,
    deliver,
    held_since,
    held_until,
    shown_url,
    slack_payload,
)


class Hook:
    """A webhook receiver: answers each POST with the next scripted status (the last repeats),
    after an optional pause, and keeps what it received."""

    def __init__(self, statuses: list[int], pause_s: float = 0.0) -> None:
        self.statuses, self.pause_s = statuses, pause_s
        self.received: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((self.headers["Content-Type"], json.loads(body)))
                status = hook.statuses[min(len(hook.received), len(hook.statuses)) - 1]
                time.sleep(hook.pause_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting (the timeout case)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)


@pytest.fixture()
def hook(request: pytest.FixtureRequest) -> Iterator[Hook]:
    statuses, pause_s = request.param
    server = Hook(statuses, pause_s)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


ALERT = {"kind": "feature_drift", "day": date(2013, 11, 20), "model_version": 3,
         "feature": "temp", "value": 0.31, "threshold": 0.2, "message": "PSI of temp 0.31"}


@pytest.mark.parametrize("hook", [([200], 0.0)], indirect=True)
def test_delivered_on_first_try(hook: Hook) -> None:
    result = deliver(hook.url, slack_payload(ALERT), retries=3, backoff_s=0.01)
    assert result == Delivery(True, 1, 200, None)
    [(content_type, body)] = hook.received
    assert content_type == "application/json"
    assert body["text"] == ":rotating_light: lakehouse feature_drift: PSI of temp 0.31"
    assert body["alert"] == {**ALERT, "day": "2013-11-20"}


@pytest.mark.parametrize("hook", [([503, 503, 200], 0.0)], indirect=True)
def test_unavailable_twice_then_delivered_on_attempt_3(hook: Hook) -> None:
    result = deliver(hook.url, {"text": "x"}, retries=3, backoff_s=0.01)
    assert result == Delivery(True, 3, 200, None)
    assert len(hook.received) == 3


@pytest.mark.parametrize("hook", [([429, 503], 0.0)], indirect=True)
def test_retries_are_bounded_and_back_off(hook: Hook) -> None:
    started = time.monotonic()
    result = deliver(hook.url, {"text": "x"}, retries=2, backoff_s=0.2)
    assert result == Delivery(False, 3, 503, "HTTP 503 Service Unavailable")
    assert len(hook.received) == 3
    assert time.monotonic() - started >= 0.2 + 0.4  # waits of 0.2 s, then 0.4 s


@pytest.mark.parametrize("hook", [([200], 2.0)], indirect=True)
def test_timeout_gives_up_after_one_plus_retries_attempts(hook: Hook) -> None:
    started = time.monotonic()
    result = deliver(hook.url, {"text": "x"}, retries=2, timeout_s=0.3, backoff_s=0.05)
    elapsed = time.monotonic() - started
    assert not result.delivered and result.attempts == 3 and result.status is None
    assert "timed out" in str(result.error)
    deadline = time.monotonic() + 2  # the server's threads record what they read
    while len(hook.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(hook.received) == 3
    # 3 timeouts of 0.3 s and waits of 0.05 + 0.1 s: under the server's 3 x 2 s of sleep, with
    # room for a busy machine
    assert 0.9 <= elapsed < 4.0


def test_refused_connection_is_retried_then_not_delivered() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = deliver(f"http://127.0.0.1:{port}/hook", {"text": "x"}, retries=2, backoff_s=0.01)
    assert not result.delivered and result.attempts == 3 and result.status is None
    assert "ConnectionRefusedError" in str(result.error)


@pytest.mark.parametrize("hook", [([400, 200], 0.0)], indirect=True)
def test_client_error_is_not_retried(hook: Hook) -> None:
    result = deliver(hook.url, {"text": "x"}, retries=3, backoff_s=0.01)
    assert result == Delivery(False, 1, 400, "HTTP 400 Bad Request")
    assert len(hook.received) == 1


def test_a_redirect_is_not_delivered() -> None:
    """urllib would follow a 301 to a POST with a GET without the body: that GET's 200 must
    not count as delivered."""
    seen: list[str] = []

    class Moved(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.send_response(301)
            # moved to another path holding the hook's token (an http hook moved to https
            # keeps its path): the target is named by its host only
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}"
                                         "/services/XXXXSECRET")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        result = deliver(f"http://127.0.0.1:{server.server_address[1]}/hook", {"text": "x"},
                         retries=3, backoff_s=0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.delivered, result.attempts, result.status) == (False, 1, 301)
    assert f"to http://127.0.0.1:{server.server_address[1]}/… (not followed" in str(result.error)
    assert "XXXXSECRET" not in str(result.error)
    assert seen == ["POST /hook"]


def test_bad_url_or_payload_is_reported_not_raised() -> None:
    assert deliver("file:///etc/hosts", {"text": "x"}) == Delivery(
        False, 0, None, "not an http(s) webhook URL: file:///…")
    circular: dict[str, Any] = {}
    circular["self"] = circular
    result = deliver("http://127.0.0.1:9/hook", circular)
    assert not result.delivered and result.attempts == 0 and "serialisable" in str(result.error)


def test_slack_payload_without_message_lists_the_fields() -> None:
    payload = slack_payload({"kind": "quality", "auc_roc": float("nan"), "day": date(2013, 12, 1)})
    assert payload == {"text": ":rotating_light: lakehouse quality: auc_roc=None, day=2013-12-01",
                       "alert": {"kind": "quality", "auc_roc": None, "day": "2013-12-01"}}
    json.dumps(payload, allow_nan=False)  # strict JSON: NaN was turned into null


def days(*offsets: int) -> list[date]:
    return [date(2013, 11, 1) + timedelta(days=i) for i in offsets]


def test_held_since_is_the_first_day_of_a_run_long_enough() -> None:
    crossed = {0, 1, 2, 3, 5, 6, 8, 10, 11, 12}
    # Day 4 clears; days 5-6 are a new run; 8 stands alone; day 9 is missing (not crossed)
    # and days 10-12 cross again after it.
    flags = [(day, i in crossed) for i, day in zip(range(13), days(*range(13)), strict=True)
             if i != 9]
    (d,) = days(0)

    def since(i: int, persist: int) -> int | None:
        found = held_since(flags, days(i)[0], persist)
        return None if found is None else (found - d).days

    assert [since(i, 2) for i in range(13)] == [None, 0, 0, 0, None, None, 5, None, None,
                                                None, None, 10, 10]
    assert [since(i, 1) for i in (0, 4, 8, 9, 12)] == [0, None, 8, None, 10]
    assert (since(3, 4), since(3, 5), since(12, 4)) == (0, None, None)
    # A gap inside a run of crossed days breaks it: 0, 1 then 3, 4 (2 missing).
    assert held_since([(x, True) for x in days(0, 1, 3, 4)], days(4)[0], 2) == days(3)[0]
    assert held_since([], d, 1) is None
    # a day not judged (None) is stepped over: it neither counts nor breaks the run
    thin = [(days(0)[0], True), (days(1)[0], None), (days(2)[0], None), (days(3)[0], True)]
    assert held_since(thin, days(3)[0], 2) == days(0)[0]
    assert held_since(thin, days(3)[0], 3) is None
    assert held_since(thin, days(1)[0], 1) is None  # not itself crossed
    assert held_until(thin, days(0)[0]) == days(3)[0]
    assert held_until([*thin, (days(4)[0], None)], days(0)[0]) == days(3)[0]
    # up to MAX_UNJUDGED_DAYS in a row: weeks of a sensor down end the episode
    from lakehouse.alerts import MAX_UNJUDGED_DAYS
    gap = [(days(0)[0], True), *((days(i)[0], None) for i in range(1, MAX_UNJUDGED_DAYS + 1)),
           (days(MAX_UNJUDGED_DAYS + 1)[0], True)]
    assert held_since(gap, gap[-1][0], 2) == days(0)[0]
    longer = [(days(0)[0], True), *((days(i)[0], None) for i in range(1, MAX_UNJUDGED_DAYS + 2)),
              (days(MAX_UNJUDGED_DAYS + 2)[0], True)]
    assert held_since(longer, longer[-1][0], 1) == longer[-1][0]
    assert held_since(longer, longer[-1][0], 2) is None
    assert held_until(longer, days(0)[0]) == days(0)[0]
    cleared = [*thin, (days(4)[0], False), (days(5)[0], True)]
    assert held_until(cleared, days(3)[0]) == days(3)[0]


def test_held_since_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="persist_days must be at least 1, got 0"):
        held_since([], days(0)[0], persist_days=0)
    with pytest.raises(ValueError, match="2013-11-01 comes after 2013-11-02"):
        held_since([(days(1)[0], True), (days(0)[0], True)], days(1)[0])


def test_a_webhook_url_is_shown_without_its_path() -> None:
    """An incoming webhook's path is its token: logs and the alerts table show the host."""
    hook = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    assert shown_url(hook) == "https://hooks.slack.com/…"
    assert shown_url("http://127.0.0.1:8080/hook?key=1") == "http://127.0.0.1:8080/…"
    # a malformed one is shown as such, and its delivery fails without raising
    assert shown_url("http://[::1/XXXXSECRET") == "(not a URL)/…"
    broken = deliver("http://[::1/XXXXSECRET", {"text": "x"}, retries=0)
    assert not broken.delivered and broken.error is not None
    assert "XXXXSECRET" not in broken.error
    # an error quoting the URL's path (http.client refuses a space in it) leaves it out
    spaced = deliver("http://127.0.0.1:9/services/XXXX SECRET", {"text": "x"}, retries=0)
    assert not spaced.delivered and spaced.error is not None
    assert "XXXX" not in spaced.error and "SECRET" not in spaced.error, spaced.error
    refused = deliver("ftp://files.example.com/XXXXSECRET", {"text": "x"})
    assert refused.attempts == 0 and refused.error is not None
    assert "ftp://files.example.com/…" in refused.error and "XXXXSECRET" not in refused.error
