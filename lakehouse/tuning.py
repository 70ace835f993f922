"""Hyperopt TPE over model families, with concurrent trials and an early stop.

Hyperopt's `fmin` runs one trial at a time and its `SparkTrials` runs each trial inside one
Spark task, where MLlib cannot run (DESIGN.md). This loop keeps TPE's suggestions and runs up to
`parallelism` trials at once, each in its own driver thread submitting distributed MLlib jobs
(in its own FAIR scheduler pool, so one fit cannot starve the others): it asks
`tpe.suggest` for a point whenever a slot is free, with the trials still running counted as
`tpe.suggest` counts them (as points of infinite loss, like failed ones: its next suggestion
moves away from the points being tried), and tells it each result as it comes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, hp, space_eval, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, Domain
from hyperopt.pyll import Apply, stochastic

from lakehouse.models import FAMILIES, INTEGER_PARAMS, check_family

log = logging.getLogger("lakehouse")


def described(error: BaseException) -> str:
    """An error as a trial's record shows it. A JVM error raised through py4j (a failed or
    cancelled MLlib fit: PySpark does not convert SparkException) reads "An error occurred
    while calling o123.fit." on its first line; the Java exception's own message says what
    happened, so that is taken."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            return f"{type(error).__name__}: {java.toString()}"
        except Exception:  # the JVM gone: py4j's text is what is left
            pass
    return f"{type(error).__name__}: {error}"


STOP_REPEAT_S = 1.0  # a stopped trial still running is stopped again this often
WEIGHTINGS = ("none", "balanced")


class SearchSpaceError(ValueError):
    """A search-space entry of conf cannot be turned into a Hyperopt distribution."""


def dimension(label: str, name: str, spec: Any) -> Any:
    """A Hyperopt distribution from conf: [low, high] (whole numbers for integer parameters),
    [low, high, "log"] (log-uniform), [low, high, step], or [v, v] / v (pinned)."""
    if isinstance(spec, bool):  # bool is an int to Python; no MLlib parameter here takes one
        raise SearchSpaceError(f"train.search_space {label}: expected a number, a name or a "
                               f"range, got {spec!r}")
    if not isinstance(spec, list | tuple):
        return spec
    if len(spec) not in (2, 3) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                          for v in spec[:2]):
        raise SearchSpaceError(f"train.search_space {label}: expected [low, high], [low, high, "
                               f"'log'] or [low, high, step], got {spec!r}")
    low, high = float(spec[0]), float(spec[1])
    if high < low:
        raise SearchSpaceError(f"train.search_space {label}: high {high} is below low {low}")
    if low == high:
        return low
    kind = spec[2] if len(spec) == 3 else (1 if name in INTEGER_PARAMS else None)
    if kind == "log":
        if low <= 0:
            raise SearchSpaceError(f"train.search_space {label}: a log range needs low > 0")
        return hp.loguniform(label, np.log(low), np.log(high))
    if isinstance(kind, int | float):
        return hp.quniform(label, low, high, kind)
    if kind is not None:
        raise SearchSpaceError(f"train.search_space {label}: unknown third element {kind!r}")
    return hp.uniform(label, low, high)


def search_space(families: list[str], bounds: dict[str, dict[str, Any]],
                 weightings: list[str]) -> dict[str, Any]:
    """The Hyperopt space: hp.choice over families, each with its parameters, and over class
    weightings (none, or balanced through weightCol)."""
    unknown = sorted(set(bounds) - set(FAMILIES))
    if unknown:
        raise SearchSpaceError(f"train.search_space has unknown families {unknown}; families "
                               f"are {list(FAMILIES)}")
    for w in weightings:
        if w not in WEIGHTINGS:
            raise SearchSpaceError(f"train.class_weighting {w!r} unknown; use {list(WEIGHTINGS)}")
    if not families or not weightings:
        raise SearchSpaceError("train.families and train.class_weighting must not be empty")
    choices = [{"family": check_family(f), "params": {
        name: dimension(f"{f}.{name}", name, spec) for name, spec in (bounds.get(f) or {}).items()}}
        for f in families]
    return {"model": hp.choice("model", choices),
            "class_weighting": hp.choice("class_weighting", list(weightings))}


def centre(name: str, spec: list[Any] | tuple[Any, ...]) -> float:
    """The centre of a range of conf (see `dimension`): its midpoint, the geometric mean of a
    log range, a quantized range's (an integer parameter's) midpoint rounded to its step,
    kept within the range."""
    low, high = float(spec[0]), float(spec[1])
    if len(spec) == 3 and spec[2] == "log":
        return float(np.sqrt(low * high))
    middle = (low + high) / 2.0
    step = spec[2] if len(spec) == 3 else (1 if name in INTEGER_PARAMS else None)
    if isinstance(step, int | float) and step > 0:
        return float(min(max(round(middle / step) * step, low), high))
    return middle


def first_points(first: list[str], families: list[str], bounds: dict[str, dict[str, Any]],
                 weightings: list[str]) -> list[dict[str, Any]]:
    """The points tried before TPE's random start (`train.first_trials`), as Hyperopt's values
    of `search_space` (label -> value, as its `points_to_evaluate` takes them): for each named
    family that the search takes, in order, the centre of its space (`centre`) with the first
    class weighting. A named family the search does not take is left out (logged); one no
    family of this job has fails."""
    points = []
    for family in first:
        check_family(family)
        if family not in families:
            log.info("train.first_trials: %s is not among train.families %s; not tried first",
                     family, families)
            continue
        values: dict[str, Any] = {"model": families.index(family), "class_weighting": 0}
        for name, spec in (bounds.get(family) or {}).items():
            if isinstance(dimension(f"{family}.{name}", name, spec), Apply):  # not pinned
                values[f"{family}.{name}"] = centre(name, spec)
        points.append(values)
    return points


def space_points(families: list[str], bounds: dict[str, dict[str, Any]],
                 seed: int) -> list[tuple[str, dict[str, Any]]]:
    """One point of each family's parameter space, drawn as the search would draw it."""
    rng = np.random.default_rng(seed)
    return [(family, stochastic.sample({name: dimension(f"{family}.{name}", name, spec)
                                        for name, spec in (bounds.get(family) or {}).items()},
                                       rng=rng))
            for family in families]


@dataclass
class Trial:
    """One finished trial."""

    number: int
    family: str
    params: dict[str, Any]
    weighting: str
    seconds: float
    started_at: float = 0.0  # epoch seconds
    auc: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.auc is not None and not np.isnan(self.auc)


@dataclass(frozen=True)
class Budget:
    """When the search stops taking new trials (and, with a stop, ends running ones).

    With refit_scale > 0 the time box holds the refit of the best model too: the search ends
    that many times the best trial's fit before the box (the refit's rows over a trial's fit
    rows: `tune_and_fit` refits on the fit and validation slices together). spent_s: seconds
    of the box used before the search started (the tuning's preparation); the search's
    elapsed times count from the start of the box."""

    max_evals: int
    timeout_s: float
    early_stop_trials: int
    parallelism: int = 1
    startup_trials: int = 5
    refit_scale: float = 0.0
    spent_s: float = 0.0


# What a fit's time grows with: the boosting rounds (in proportion), the trees' depth (the
# passes over the data a tree takes) and a forest's size.
ROUNDS = {"gbt": "maxIter", "newton_gbt": "maxIter"}
# Families whose trees see only the sample (`subsamplingRate`) in every pass, so that most of a
# fit's time follows it (MLlib's GBT and forest sample after binning the rows: little of theirs
# does).
SAMPLED = ("newton_gbt",)
REFUSALS = 3  # suggested trials in a row that would run past the time box end the search


def fit_seconds(trial: Trial) -> float:
    """A finished trial's fit alone (`fit_seconds`, when the objective gave it), else its
    whole time."""
    return float(trial.extra.get("fit_seconds", trial.seconds))


def expected_seconds(family: str, params: dict[str, Any], finished: list[Trial]) -> float | None:
    """The least time the fit of a trial of family at params can be expected to take, from
    the same family's successful trials: the fastest of their fits, in proportion to the
    boosting rounds for the boosting families, scaled down (never up) in proportion to a
    smaller maxDepth, and only from forests of no more trees and (Newton) trials that sampled
    no more rows (`subsamplingRate`). Only the fit counts (its
    `fit_seconds`, when the objective gave it; not the scoring). Toward fewer rounds or a
    smaller depth a fit's fixed costs are scaled down with it (the estimate errs toward
    starting); toward more rounds they are scaled up with it (split finding and caching, a few
    seconds for MLlib's GBT on the full year), so it can run that much high. A fit timed beside
    another trial (parallelism > 1) shared the machine and reads slower than alone. None
    without such a trial."""
    key = ROUNDS.get(family)

    def given(values: dict[str, Any], name: str) -> float | None:
        value = values.get(name)
        return float(value) if value else None

    def scaled(trial: Trial) -> float | None:
        trees, its_trees = given(params, "numTrees"), given(trial.params, "numTrees")
        if trees is not None and its_trees is not None and its_trees > trees:
            return None  # a larger forest says nothing of a smaller one's time
        rate, its_rate = given(params, "subsamplingRate"), given(trial.params, "subsamplingRate")
        if family in SAMPLED and (its_rate or 1.0) > (rate or 1.0):
            return None  # nor trees fitted on more rows of those fitted on fewer
        seconds = fit_seconds(trial)
        if key:
            rounds, its_rounds = given(params, key), given(trial.params, key)
            if rounds is not None and its_rounds is not None:  # both from the search space
                seconds *= rounds / its_rounds
        depth, its_depth = given(params, "maxDepth"), given(trial.params, "maxDepth")
        if depth is not None and its_depth is not None:
            seconds *= min(1.0, depth / its_depth)
        return seconds

    times = [seconds for seconds in (scaled(t) for t in finished if t.ok and t.family == family)
             if seconds is not None]
    return min(times) if times else None


class SearchTrials(list[Trial]):
    """A search's trials in the order they finished, why it ended (`ended`) and the seconds
    of the time box kept for the refit of the best model when it ended (`kept_for_refit`)."""

    ended: str = ""
    kept_for_refit: float = 0.0


Objective = Callable[[int, str, dict[str, Any], str], tuple[float, dict[str, Any]]]


def search(objective: Objective, space: dict[str, Any], budget: Budget, seed: int,
           set_pool: Callable[[str | None], None] | None = None,
           on_done: Callable[[Trial], None] | None = None,
           stop: Callable[[int], None] | None = None,
           wrap: Callable[[Callable[..., Trial]], Callable[..., Trial]] | None = None,
           first: Sequence[dict[str, Any]] = (),
           ) -> SearchTrials:
    """Run the search; returns every trial in the order they finished, and why it ended.

    first: points of the space (Hyperopt's values, label -> value: `first_points`) tried
    before any point TPE suggests, in order, as Hyperopt's `points_to_evaluate`; TPE counts
    their results like its own, and its random start is not shortened by them.

    objective(number, family, params, weighting) returns (validation AUC, extra); an exception
    makes the trial fail (recorded with its error) and the search goes on. set_pool(name) is
    called in a trial's thread before it starts (None after), with a pool name per free slot;
    on_done(trial) in the calling thread as each trial finishes. wrap(target), called in the
    calling thread as each trial is submitted, returns the target the trial's thread runs (e.g.
    PySpark's `inheritable_thread_target`, so the trial's jobs carry the caller's job group).
    When the time box ends with trials still running and one trial has succeeded already,
    stop(number) is called for each running trial, again every STOP_REPEAT_S until it ends (a
    cancellation reaches only the jobs running at that moment): it should make that trial's
    objective raise (the trial is recorded as stopped at the time box). Without stop, or before
    any trial succeeded, running trials finish. With stop, once a trial succeeded, a suggested
    trial whose fit its family's finished trials say would still run at the end of the box
    (`expected_seconds`) is not started: TPE counts its point as failed and suggests again,
    and after REFUSALS such suggestions in a row no trial starts; nor does one once less time
    is left than the shortest successful trial took. With budget.refit_scale, the
    end of the box is that of the search: the box less the refit of its best model (see
    `Budget`); a suggested trial must leave room for its own refit too, should it be the
    best. When the search itself fails or is interrupted (an error from on_done,
    KeyboardInterrupt), running trials are stopped the same way before the error propagates
    (without stop, they are waited for).
    """
    domain = Domain(lambda _: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(seed)
    started = time.monotonic() - budget.spent_s
    finished: list[Trial] = []
    running: dict[Future[Trial], dict[str, Any]] = {}
    numbers: dict[Future[Trial], int] = {}
    slots: dict[Future[Trial], int] = {}
    stopped: dict[int, str] = {}  # trial number -> why it was stopped
    begun: dict[Future[Trial], float] = {}  # seconds from the start at which it was submitted
    last_stop = 0.0  # seconds from the start at which running trials were last stopped
    unstoppable: set[int] = set()
    submitted = 0
    closed = ""  # why no trial starts any more, when trials would run past the time box
    refusals = 0  # suggested trials in a row not started (they would run past the time box)
    refused = 0  # all of them
    pending = [dict(point) for point in first]  # given points not tried yet

    def run(number: int, point: dict[str, Any], slot: int) -> Trial:
        family, params = point["model"]["family"], dict(point["model"]["params"])
        if set_pool is not None:
            set_pool(f"trial-{slot}")
        began = time.monotonic()
        trial = Trial(number, family, params, point["class_weighting"], 0.0, time.time())
        try:
            trial.auc, trial.extra = objective(number, family, params, trial.weighting)
        except Exception as error:  # recorded and reported; the search goes on
            trial.error = described(error)[:1000]
            if number in stopped:  # by the time box, or as the search was interrupted
                log.info("trial %d stopped: %s", number, trial.error.splitlines()[0])
                # what it ended with is kept: a real error raised as it was stopped would
                # otherwise read as the cancellation (the reason is set before the stop)
                trial.error = (f"stopped {stopped[number]}; it ended with "
                               f"{trial.error.splitlines()[0]}")[:1000]
            else:
                log.warning("trial %d (%s) failed: %s", number, family, trial.error)
        finally:
            if set_pool is not None:
                set_pool(None)
        trial.seconds = time.monotonic() - began
        return trial

    def reserve(candidate: float = 0.0) -> float:
        """Seconds of the box kept for the refit of the best trial (or of a candidate's, if
        larger: it may become the best)."""
        best = best_trial(finished)
        return budget.refit_scale * max(candidate, fit_seconds(best) if best else 0.0)

    def left() -> float:
        """Seconds left to the search: to the end of the box, less the refit's."""
        return budget.timeout_s - reserve() - (time.monotonic() - started)

    def box() -> str:
        kept = reserve()
        if kept >= budget.timeout_s:
            return (f"the time box ({budget.timeout_s:.0f} s), which the best model's refit "
                    f"(~{kept:.0f} s) fills")
        return (f"the time box ({budget.timeout_s:.0f} s" +
                (f", {kept:.0f} s of it kept for the refit)" if kept else ")"))

    def cutoff(future: Future[Trial]) -> float:
        """Seconds from the start at which a running trial is stopped: when the refit of the
        best trial, or its own should it become the best (no shorter than the time it has run:
        a refit prepares and fits on more rows), would no longer end within the box."""
        scale = budget.refit_scale
        return min(budget.timeout_s - reserve(),
                   (budget.timeout_s + scale * begun[future]) / (1.0 + scale))

    def end_reason() -> str:
        """Why no trial may start now ("" when one may)."""
        # the first trial that reached the best: a later equal score is no improvement; a
        # trial stopped at the time box or by an interruption does not count as one that
        # failed to improve
        counted = [t for t in finished if t.number not in stopped]
        best_at = min((i for i, t in enumerate(counted) if t.ok and t.auc == best_auc(counted)),
                      default=-1)
        if submitted >= budget.max_evals:
            return f"max_evals: {budget.max_evals} trials"
        if len(counted) - 1 - best_at >= budget.early_stop_trials and best_at >= 0:
            return (f"early stop: the best validation AUC-ROC did not improve in "
                    f"{budget.early_stop_trials} trials")
        if closed:
            return closed
        if left() <= 0:
            return box()
        # with less time left than any trial of this search took, a new trial (even of a
        # family not timed yet) would be stopped at the box: a failed trial and seconds lost
        shortest = min((t.seconds for t in finished if t.ok), default=None)
        if stop is not None and shortest is not None and left() < shortest:
            return (f"{box()}: {max(left(), 0.0):.0f} s left, less than the shortest trial "
                    f"of this search ({shortest:.0f} s)")
        return ""

    def may_start() -> bool:
        return not end_reason()

    def runs_past_box(point: dict[str, Any]) -> bool:
        """Whether the suggested trial would still be running at the end of the time box, as
        far as its family's finished trials tell; asked only once a trial succeeded and with
        stop (otherwise running trials are let finish, and nothing is thrown away). Such a
        trial is not started; after REFUSALS in a row, no trial is."""
        nonlocal closed, refusals, refused
        if stop is None or best_auc(finished) is None:
            return False
        family = point["model"]["family"]
        fit = expected_seconds(family, point["model"]["params"], finished)
        if fit is None:
            return False
        # judged by its whole time (its fit and the scoring around it), as a running trial's
        # cutoff judges it: the least the family's trials spent outside their fit is added
        need = fit + max(0.0, min(t.seconds - fit_seconds(t) for t in finished
                                  if t.ok and t.family == family))
        elapsed = time.monotonic() - started
        kept = reserve(need)
        if need + kept <= budget.timeout_s - elapsed:
            return False
        refusals += 1
        refused += 1
        log.info("a %s trial not started: it would take ~%.0f s by the family's trials (and "
                 "the refit ~%.0f s), %.0f s are left of the time box (%.0f s)", family, need,
                 kept, max(budget.timeout_s - elapsed, 0.0), budget.timeout_s)
        if refusals >= REFUSALS:
            closed = (f"{refusals} suggested trials in a row would have run past the time box "
                      f"({budget.timeout_s:.0f} s) at {elapsed:.0f} s (the last ~{need:.0f} s "
                      f"and ~{kept:.0f} s for the refit)")
            log.info("the search starts no more trials: %s", closed)
        return True

    def stop_all() -> None:
        """Stop every running trial, again every STOP_REPEAT_S, until each has ended."""
        pending = set(running)
        if stop is None or not pending:
            return
        log.warning("the search failed or was interrupted: stopping %d running trial(s)",
                    len(pending))
        while pending:
            try:
                for future in pending:
                    stopped.setdefault(numbers[future], "as the search failed or was "
                                                        "interrupted")
                    try:
                        stop(numbers[future])
                    except Exception as error:  # the trial then finishes; the error goes on
                        if numbers[future] not in unstoppable:
                            unstoppable.add(numbers[future])
                            log.warning("trial %d: could not be stopped: %s", numbers[future],
                                        error)
                _, pending = wait(pending, timeout=STOP_REPEAT_S)
            except KeyboardInterrupt:  # a second Ctrl-C: the trials are still to be stopped
                pending = {f for f in pending if not f.done()}

    pool = ThreadPoolExecutor(budget.parallelism, thread_name_prefix="trial")
    try:
        while True:
            while len(running) < budget.parallelism and may_start():
                ids = trials.new_trial_ids(1)
                trials.refresh()
                if pending:  # a given point: a trial doc as Hyperopt's own suggest makes one
                    # (not fmin's generate_trials_to_calculate: its docs hold only the given
                    # labels, and TPE reads every label of the space from every trial: on this
                    # conditional space its next suggestion failed with a KeyError for another
                    # family's parameter, hyperopt 0.3.0)
                    given = pending.pop(0)
                    misc = {"tid": ids[0], "cmd": domain.cmd, "workdir": domain.workdir,
                            "idxs": {k: ids if k in given else [] for k in domain.params},
                            "vals": {k: [given[k]] if k in given else []
                                     for k in domain.params}}
                    (doc,) = trials.new_trial_docs(ids, [None], [domain.new_result()], [misc])
                else:
                    # refused and given points are among the trials TPE counts: the random
                    # start is not shortened by them
                    (doc,) = tpe.suggest(ids, domain, trials, int(rng.integers(2**31 - 1)),
                                         n_startup_jobs=budget.startup_trials + refused
                                         + len(first))
                doc["state"] = JOB_STATE_RUNNING
                trials.insert_trial_docs([doc])
                trials.refresh()
                # the stored doc, not ours: insert_trial_docs keeps a copy when bson is
                # importable (SONify), and a result set on ours would never reach TPE
                doc = next(t for t in trials.trials if t["tid"] == doc["tid"])
                values = {k: v[0] for k, v in doc["misc"]["vals"].items() if v}
                point = space_eval(space, values)
                if runs_past_box(point):  # TPE counts it as a failed point and suggests again
                    doc["state"], doc["result"] = JOB_STATE_DONE, {"status": STATUS_FAIL}
                    trials.refresh()
                    continue
                refusals = 0
                submitted += 1
                slot = min(set(range(budget.parallelism)) - set(slots.values()))
                target = wrap(run) if wrap is not None else run
                begun_at = time.monotonic() - started
                future = pool.submit(target, submitted, point, slot)
                running[future], numbers[future], slots[future], begun[future] = (
                    doc, submitted, slot, begun_at)
            if not running:
                break
            # the time box ends the running trials too, once there is a model to refit: each at
            # its cutoff (the refit is kept its part of the box); the stopped ones are stopped
            # again every STOP_REPEAT_S until they end
            may_stop = stop is not None and best_auc(finished) is not None
            now = time.monotonic() - started
            waits = [max(cutoff(f) - now, 0.0) for f in running if numbers[f] not in stopped]
            if len(waits) < len(running):
                waits.append(max(last_stop + STOP_REPEAT_S - now, 0.0))
            done, _ = wait(running, timeout=min(waits) if may_stop else None,
                           return_when=FIRST_COMPLETED)
            if not done and stop is not None:
                now = last_stop = time.monotonic() - started
                for future, number in sorted(numbers.items(), key=lambda item: item[1]):
                    if number not in stopped:
                        if cutoff(future) > now:
                            continue
                        own = cutoff(future) < budget.timeout_s - reserve()
                        stopped[number] = (
                            f"at {now:.0f} s: its own refit, should it be the best (no shorter "
                            f"than the {now - begun[future]:.0f} s it has run), would end past "
                            f"the time box ({budget.timeout_s:.0f} s)" if own
                            else f"at {now:.0f} s: {box()}" if reserve() else f"at {box()}")
                        log.info("trial %d: stopping it %s", number, stopped[number])
                    try:
                        stop(number)
                    except Exception as error:  # the trial then finishes; the search goes on
                        if number not in unstoppable:
                            unstoppable.add(number)
                            log.warning("trial %d: could not be stopped: %s", number, error)
                continue
            for future in done:
                doc, trial = running.pop(future), future.result()
                numbers.pop(future)
                slots.pop(future)
                begun.pop(future)
                # A failed trial stays among the trials (as fmin keeps it): TPE counts its
                # point as a bad one (no loss) instead of suggesting it again.
                doc["state"] = JOB_STATE_DONE
                doc["result"] = ({"status": STATUS_OK, "loss": -float(trial.auc or 0)}
                                 if trial.ok else {"status": STATUS_FAIL, "error": trial.error})
                trials.refresh()
                finished.append(trial)
                if on_done is not None:
                    on_done(trial)
                log.info("trial %d of %d: %s %s, validation AUC %s, best %s, %.0f s elapsed",
                         trial.number, budget.max_evals, trial.family, trial.weighting,
                         f"{trial.auc:.4f}" if trial.ok else f"failed ({trial.error})",
                         f"{best_auc(finished):.4f}" if best_auc(finished) is not None else "-",
                         time.monotonic() - started)
    except BaseException:
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    result = SearchTrials(finished)
    result.ended = end_reason()
    result.kept_for_refit = reserve()
    return result


def best_auc(trials: list[Trial]) -> float | None:
    scores = [t.auc for t in trials if t.ok and t.auc is not None]
    return max(scores) if scores else None


def best_trial(trials: list[Trial]) -> Trial | None:
    ok = [t for t in trials if t.ok]
    return max(ok, key=lambda t: (t.auc, -t.number)) if ok else None
