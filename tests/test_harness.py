"""The local notebook harness: cells, widgets, exit, display, and magics that must fail."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from lakehouse.cli import main
from lakehouse.harness import (
    NotebookFormatError,
    UnsupportedMagicError,
    WidgetError,
    parse,
    run_notebook,
)

SEP = "\n# COMMAND ----------\n\n"


def notebook(tmp_path: Path, *cells: str, name: str = "nb.py") -> Path:
    path = tmp_path / name
    path.write_text("# Databricks notebook source\n" + SEP.join(cells) + "\n")
    return path


def test_cells_run_in_order_in_one_namespace_and_exit_ends_the_run(
        spark: SparkSession, tmp_path: Path) -> None:
    path = notebook(
        tmp_path,
        "# MAGIC %md\n# MAGIC # Title\n# MAGIC text that is not Python",
        'dbutils.widgets.text("rows", "3")\ndbutils.widgets.dropdown("mode", "a", ["a", "b"])',
        'n = int(dbutils.widgets.get("rows"))\ndf = spark.range(n)\ndisplay(df)',
        'dbutils.notebook.exit(f"{df.count()} {dbutils.widgets.get(\'mode\')}")',
        'raise AssertionError("a cell after exit ran")')
    run = run_notebook(path, spark, {"rows": "5", "mode": "b"})
    assert run.exit_value == "5 b"
    assert run.widgets == {"rows": "5", "mode": "b"}
    assert [d.count() for d in run.displayed] == [5]
    assert run_notebook(path, spark).exit_value == "3 a"  # the defaults


def test_cells_know_their_lines_in_the_file(tmp_path: Path) -> None:
    path = notebook(tmp_path, "# MAGIC %md\n# MAGIC x", "\n\na = 1\n\n", "b = 2")
    cells = parse(path)
    lines = path.read_text().splitlines()
    assert [(c.number, c.magic) for c in cells] == [(1, "md"), (2, None), (3, None)]
    assert [lines[c.line - 1] for c in cells] == ["# MAGIC %md", "a = 1", "b = 2"]


def test_a_failing_cell_raises_its_own_error_at_the_notebook_line(
        spark: SparkSession, tmp_path: Path) -> None:
    path = notebook(tmp_path, "x = 1", "y = 2\nraise KeyError('missing thing')")
    with pytest.raises(KeyError, match="missing thing") as raised:
        run_notebook(path, spark)
    assert f"in notebook {path}, cell 2 (from line 5)" in raised.value.__notes__
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert (frames[-1].filename, frames[-1].lineno) == (str(path), 6)


@pytest.mark.parametrize("magic", ["sql", "run", "pip", "sh"])
def test_cell_magics_it_cannot_run_fail_before_any_cell_runs(
        spark: SparkSession, tmp_path: Path, magic: str) -> None:
    marker = tmp_path / "ran"
    path = notebook(tmp_path, f"open({str(marker)!r}, 'w').close()",
                    f"# MAGIC %{magic} something")
    with pytest.raises(UnsupportedMagicError,
                       match=rf"nb.py: cell 2 \(line 5\) uses %{magic}, which the local harness"):
        run_notebook(path, spark)
    assert not marker.exists()


def test_widget_mistakes_are_named(spark: SparkSession, tmp_path: Path) -> None:
    undeclared = notebook(tmp_path, 'dbutils.widgets.text("a", "1")\ndbutils.widgets.get("b")')
    with pytest.raises(WidgetError, match=r"no input widget named 'b'.*\['a'\]"):
        run_notebook(undeclared, spark)
    choice = notebook(tmp_path, 'dbutils.widgets.dropdown("m", "x", ["x", "y"])', name="c.py")
    with pytest.raises(WidgetError, match=r"widget 'm': value 'z' is not one of"):
        run_notebook(choice, spark, {"m": "z"})
    with pytest.raises(WidgetError, match=r"arguments \['typo'\] match no widget"):
        run_notebook(choice, spark, {"typo": "1"})


def test_a_misspelt_parameter_fails_before_any_cell_runs(tmp_path: Path) -> None:
    """The widgets are read from the source first: a typo in a parameter does not run the
    notebook (here: write a file) on its defaults, and nothing reaches Spark."""
    marker = tmp_path / "ran"
    path = notebook(tmp_path, f"open({str(marker)!r}, 'w').close()",
                    'dbutils.widgets.text("rows", "3")\n'
                    'dbutils.widgets.dropdown(name="mode", defaultValue="a", choices=["a", "b"])',
                    'n = int(dbutils.widgets.get("rows"))')
    never = SparkSession  # not a session: nothing may reach Spark
    with pytest.raises(WidgetError, match=r"arguments \['rwos'\] match no widget; its widgets "
                                          r"are \['mode', 'rows'\]"):
        run_notebook(path, never, {"rwos": "5", "mode": "b"})  # type: ignore[arg-type]
    assert not marker.exists()
    run = run_notebook(path, never, {"rows": "5", "mode": "b"})  # type: ignore[arg-type]
    assert marker.exists()
    assert run.widgets == {"rows": "5", "mode": "b"}


def test_a_widget_named_at_run_time_is_checked_after_the_run(tmp_path: Path) -> None:
    """A name the source does not spell out cannot be checked first: the run checks it."""
    path = notebook(tmp_path, 'name = "ro" + "ws"\ndbutils.widgets.text(name, "3")')
    never = SparkSession
    run = run_notebook(path, never, {"rows": "5"})  # type: ignore[arg-type]
    assert run.widgets == {"rows": "5"}
    with pytest.raises(WidgetError, match=r"arguments \['rwos'\] match no widget"):
        run_notebook(path, never, {"rwos": "5"})  # type: ignore[arg-type]
    # widgets declared through an alias: nothing to check first, a valid argument runs
    aliased = notebook(tmp_path, 'w = dbutils.widgets\nw.text("rows", "3")')
    assert run_notebook(aliased, never, {"rows": "5"}).widgets == {  # type: ignore[arg-type]
        "rows": "5"}


def test_a_file_that_is_not_a_notebook_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "script.py"
    path.write_text("print('hello')\n")
    with pytest.raises(NotebookFormatError, match="expected '# Databricks notebook source'"):
        run_notebook(path, spark)


def test_display_saves_figures_and_the_cli_runs_a_notebook(
        spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = notebook(tmp_path, 'dbutils.widgets.text("title", "t")',
                    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                    "ax.plot([0, 1], [0, 1])\nax.set_title(dbutils.widgets.get('title'))\n"
                    "display(fig)")
    assert main(["notebook", str(path), "-p", "title=diagonal", "--output",
                 str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "nb-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figures ['{png}']" in capsys.readouterr().out


def test_bad_notebook_parameters_are_named_before_anything_runs(tmp_path: Path) -> None:
    from lakehouse import workflow
    from lakehouse.config import load_config

    config = load_config("local", overrides={"data_root": str(tmp_path)})
    never = SparkSession  # not a session: nothing may reach Spark
    with pytest.raises(ValueError, match=r"from: expected a date as YYYY-MM-DD, got '2013-13-01'"):
        workflow.run_job(never, config, "score", "2013-13-01")  # type: ignore[arg-type]
    with pytest.raises(workflow.UnknownStageError, match=r"unknown stage 'silvr' in stages"):
        workflow.run_job(never, config, "daily", stages="bronze,silvr")  # type: ignore[arg-type]
    with pytest.raises(workflow.UnknownStageError, match=r"unknown job 'monitr'"):
        workflow.run_job(never, config, "monitr")  # type: ignore[arg-type]
    assert not (tmp_path / "delta").exists()


def test_multiselect_widgets_an_early_exit_and_no_file_name_as_on_databricks(
        tmp_path: Path) -> None:
    """A multiselect's value is its choices joined by commas, each checked; a notebook that
    exits before the cell declaring a widget given an argument is not failed for it; and
    `__file__`, which a Databricks notebook lacks, is not defined."""
    never = SparkSession  # not a session: nothing here reaches Spark
    picks = notebook(tmp_path, 'dbutils.widgets.multiselect("stages", "gold", '
                               '["bronze", "silver", "gold"])\n'
                               'dbutils.notebook.exit(dbutils.widgets.get("stages"))')
    assert run_notebook(picks, never).exit_value == "gold"  # type: ignore[arg-type]
    assert run_notebook(picks, never,  # type: ignore[arg-type]
                        {"stages": "bronze,silver"}).exit_value == "bronze,silver"
    with pytest.raises(WidgetError, match=r"holds \['platinum'\], not among its choices"):
        run_notebook(picks, never, {"stages": "bronze,platinum"})  # type: ignore[arg-type]
    early = notebook(tmp_path, 'dbutils.widgets.text("mode", "a")',
                     'if dbutils.widgets.get("mode") == "a":\n    dbutils.notebook.exit("done")',
                     'dbutils.widgets.text("rows", "3")', name="early.py")
    assert run_notebook(early, never, {"rows": "5"}).exit_value == "done"  # type: ignore[arg-type]
    with pytest.raises(NameError, match="__file__"):
        run_notebook(notebook(tmp_path, "print(__file__)", name="file.py"),
                     never)  # type: ignore[arg-type]
