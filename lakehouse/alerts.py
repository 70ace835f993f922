"""Alert episodes from a daily condition, and webhook delivery that retries what is transient.

An alert is raised once per episode: when its condition has held for `persist_days` days in a
row, not again while it keeps holding (the alerts recorded say), and again only after it has
cleared. Delivery POSTs JSON
with the standard library; it never raises, because a webhook must not fail the workflow: the
caller records in the alert row whether the message arrived.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

__all__ = ["Delivery", "deliver", "held_since", "held_until", "slack_payload"]

log = logging.getLogger("lakehouse.alerts")
# Statuses worth another try: the receiver is overloaded or asks us to slow down.
RETRY_STATUSES = frozenset({429, *range(500, 600)})


def held_since(flags: Sequence[tuple[date, bool | None]], day: date,
               persist_days: int = 1) -> date | None:
    """The first day of the run of consecutive crossed days ending at day, when day is crossed
    and the run holds at least persist_days crossed days; else None.

    Whether that run (an episode) was alerted already is not decided here: the alerts
    recorded say (a day whose version was not champion, or a rule whose persist_days changed
    mid-run, raised none, and replaying the history could not tell).

    Args:
        flags: (day, condition crossed) sorted by day, one per day at most. None: the day was
            not judged (too few flights to say, e.g. a day landed in part): it neither counts
            towards persist_days nor ends the run, since too little data is not the condition
            cleared (up to MAX_UNJUDGED_DAYS such days in a row). A day missing from the list
            counts as not crossed (it ends an episode and breaks a run).
        day: the day asked about.
        persist_days: how many crossed days in a run raise the alert (1: the first one).
    """
    if persist_days < 1:
        raise ValueError(f"persist_days must be at least 1, got {persist_days}")
    previous = None
    for d, _ in flags:
        if previous is not None and d <= previous:
            raise ValueError(f"flags must be sorted by day with one flag per day: {d} comes "
                             f"after {previous}")
        previous = d
    state = dict(flags)
    if state.get(day) is not True:
        return None
    run = _run(state, day, -1)
    return run[-1] if len(run) >= persist_days else None


def held_until(flags: Sequence[tuple[date, bool | None]], day: date) -> date:
    """The last crossed day of the run holding day (day itself when no later day of the run
    crossed; days not judged are stepped over, as in `held_since`): a day run again after
    later days were monitored belongs to the episode those days may have alerted already."""
    return _run(dict(flags), day, 1)[-1]


# At most this many days in a row not judged are stepped over inside a run: a longer stretch
# (weeks of a sensor down) ends the episode, so a crossing after it is news and raises again.
MAX_UNJUDGED_DAYS = 3


def _run(state: dict[date, bool | None], day: date, step: int) -> list[date]:
    """The crossed days of the run holding day, from day in the direction of step (-1: back),
    stepping over up to MAX_UNJUDGED_DAYS days in a row not judged."""
    crossed, unjudged, at = [day], 0, day + timedelta(days=step)
    while at in state and state[at] is not False:
        if state[at]:
            crossed.append(at)
            unjudged = 0
        else:
            unjudged += 1
            if unjudged > MAX_UNJUDGED_DAYS:
                break
        at += timedelta(days=step)
    return crossed


@dataclass(frozen=True)
class Delivery:
    """How a webhook POST ended: delivered or not, after how many attempts, and why."""

    delivered: bool
    attempts: int
    status: int | None
    error: str | None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib answers a 301/302/303 to a POST with a GET without
    the body, whose 200 would count an alert the hook never received as delivered (an http://
    hook redirected to https:// is the common case). The 3xx is then an HTTPError, not
    retried, its Location named in the error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: bytes, timeout_s: float) -> int:
    """POST body once; the HTTP status of a 2xx answer (urllib raises for the others)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "lakehouse-alerts"})
    with _OPENER.open(request, timeout=timeout_s) as response:
        response.read()
        return int(response.status)


def unreachable(delivery: Delivery) -> bool:
    """Whether a delivery failed the way a webhook that is down fails (no answer, a refusal or
    timeout, 5xx or 429), rather than on this payload alone (a 4xx, a payload that is not
    JSON): the same URL's next POST is then likely to fail too."""
    return (not delivery.delivered and delivery.attempts > 0
            and (delivery.status is None or delivery.status in RETRY_STATUSES))


def _outcome(error: Exception) -> tuple[int | None, str, bool]:
    """The status, description and whether to retry, for a failed POST."""
    if isinstance(error, urllib.error.HTTPError):
        error.close()
        target = error.headers.get("Location") if error.headers is not None else None
        # the target shown as the hook is (an http hook redirected to https: the same token)
        moved = ((f" to {shown_url(target)}" if target else "")
                 + " (not followed: set the webhook URL that answers the POST itself)"
                 if 300 <= error.code < 400 else "")
        return (error.code, f"HTTP {error.code} {error.reason}{moved}",
                error.code in RETRY_STATUSES)
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    transient = isinstance(reason, (ConnectionError, TimeoutError))
    return None, f"{type(reason).__name__}: {reason}", transient


def _redacted(message: str, url: str) -> str:
    """message without the webhook's path or query (its token), which an error may quote
    (e.g. http.client's InvalidURL names the path holding a control character)."""
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = [url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.path,
                   parts.query]
    except ValueError:
        secrets = [url]
    for secret in sorted((s for s in secrets if len(s) > 1), key=len, reverse=True):
        message = message.replace(secret, "/…")
    return message


def shown_url(url: str) -> str:
    """The webhook as logs and the alerts table show it: scheme, host and port only (a Slack or
    Teams incoming webhook's path is its token)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it is shown
        return "(not a URL)/…"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is no number
        port = ":?"
    if not parts.scheme:  # a relative redirect's path
        return "/…"
    return f"{parts.scheme}://{parts.hostname or ''}{port}/…"


def deliver(url: str, payload: dict[str, Any], retries: int = 3, timeout_s: float = 5.0,
            backoff_s: float = 1.0) -> Delivery:
    """POST payload as JSON to a webhook, retrying refusals, timeouts, 5xx and 429; never raises.

    Other 4xx answers (a bad URL path, a revoked hook) and malformed URLs are not retried: the
    same request would fail the same way.

    Args:
        url: the webhook (http or https).
        payload: the JSON body (dates as ISO strings, NaN as null, other objects as str).
        retries: further attempts after the first, for transient failures only.
        timeout_s: the socket timeout of each attempt (connect, and each read).
        backoff_s: the wait before the first retry; it doubles for each further one.

    Returns:
        The Delivery: delivered on a 2xx, the attempts made, the last status and error.
    """
    if not url.lower().startswith(("http://", "https://")):
        return Delivery(False, 0, None, f"not an http(s) webhook URL: {shown_url(url)}")
    try:
        body = json.dumps(_json_safe(payload), default=str).encode("utf-8")
    except Exception as error:  # e.g. a circular structure: still never raise
        return Delivery(False, 0, None, f"payload is not JSON serialisable: {error!r}")
    status: int | None = None
    message: str | None = None
    for attempt in range(1, retries + 2):
        try:
            status = _post(url, body, timeout_s)
            return Delivery(True, attempt, status, None)
        except Exception as error:  # never raise: the workflow must not fail on a webhook
            status, message, transient = _outcome(error)
            message = _redacted(message, url)
        if not transient or attempt > retries:
            log.warning("webhook %s: attempt %d failed (%s); giving up", shown_url(url),
                        attempt, message)
            return Delivery(False, attempt, status, message)
        wait = backoff_s * 2 ** (attempt - 1)
        log.warning("webhook %s: attempt %d failed (%s); retrying in %.1f s", shown_url(url),
                    attempt, message, wait)
        time.sleep(wait)
    return Delivery(False, retries + 1, status, message)  # not reached: the loop returns


def _json_safe(value: Any) -> Any:
    """value with dates as ISO strings, NaN and infinities as null, numpy scalars as Python."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def slack_payload(alert: dict[str, Any]) -> dict[str, Any]:
    """A webhook body that Slack and Teams incoming webhooks display: text plus the fields.

    Args:
        alert: the alert's fields (e.g. kind, day, model_version, metric, feature, value,
            threshold, message).

    Returns:
        {"text": one readable line, "alert": the fields as JSON-safe values}; receivers that
        only show text ignore "alert", programs reading the hook use it.
    """
    fields = _json_safe(alert)
    kind = fields.get("kind", "alert")
    detail = fields.get("message") or ", ".join(
        f"{key}={value}" for key, value in fields.items() if key not in ("kind", "message"))
    return {"text": f":rotating_light: lakehouse {kind}: {detail}", "alert": fields}
