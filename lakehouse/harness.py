"""Run Databricks source-format notebooks outside Databricks: in tests, on a laptop, in CI.

A notebook (`# Databricks notebook source`, cells split by `# COMMAND ----------`) runs top to
bottom in one namespace holding what Databricks gives every notebook: `spark` (the session
passed in), `dbutils` (`widgets` and `notebook.exit`) and `display`. Markdown cells
(`# MAGIC %md`) are documentation and are skipped; every other cell magic (`%sql`, `%run`,
`%pip`, `%sh`, ...) raises UnsupportedMagicError, naming the notebook, cell and line: nothing is
silently left out. Arguments play the part of a job's notebook parameters: they set the value
of the widget of the same name, and an argument no widget declares is an error (a typo would
otherwise run the notebook on its defaults), raised before any cell runs when the notebook's
widget declarations name their widgets as string literals.

    lakehouse notebook notebooks/bronze.py -p env=local
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

HEADER = "# Databricks notebook source"
CELL_SEPARATOR = re.compile(r"^# COMMAND -+[ \t]*$")
MAGIC = "# MAGIC"
SKIPPED_MAGICS = ("md", "md-sandbox")
WIDGET_KINDS = frozenset({"text", "dropdown", "combobox", "multiselect"})


class NotebookFormatError(ValueError):
    """A file that is not a Databricks source-format notebook."""


class UnsupportedMagicError(RuntimeError):
    """A cell magic the harness cannot run (%sql, %run, %pip, ...)."""


class WidgetError(ValueError):
    """A widget read before it is declared, a value outside a dropdown's choices, or an
    argument that no widget declares."""


@dataclass(frozen=True)
class Cell:
    """One notebook cell: its 1-based number, first line in the file, source and magic."""

    number: int
    line: int
    source: str
    magic: str | None = None


def parse(path: Path) -> list[Cell]:
    """Split a source-format notebook into cells, failing on a missing header."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].strip() != HEADER:
        found = lines[0].strip() if lines else ""
        raise NotebookFormatError(f"{path}: first line is {found!r}, expected {HEADER!r}")
    cells: list[Cell] = []
    chunk: list[str] = []
    number, start = 1, 2
    for line_no, line in enumerate(lines[1:], start=2):
        if CELL_SEPARATOR.match(line):
            _add_cell(cells, number, start, chunk)
            number, start, chunk = number + 1, line_no + 1, []
        else:
            chunk.append(line)
    _add_cell(cells, number, start, chunk)
    return cells


def _add_cell(cells: list[Cell], number: int, start: int, chunk: list[str]) -> None:
    while chunk and not chunk[0].strip():
        chunk, start = chunk[1:], start + 1
    if chunk:
        source = "\n".join(chunk).rstrip() + "\n"
        cells.append(Cell(number, start, source, _magic(chunk[0])))


def _magic(first: str) -> str | None:
    if not first.startswith(f"{MAGIC} %"):
        return None
    return first.removeprefix(f"{MAGIC} %").split()[0]


def declared_widgets(cells: Sequence[Cell]) -> set[str] | None:
    """Names of the widgets the Python cells declare (`dbutils.widgets.text("name", ...)` and
    dropdown, combobox, multiselect), read from the source without running it; None when that
    cannot be known: a cell does not parse, no declaration is written that way, a
    declaration's name is not a string literal, or `dbutils.widgets` is used other than as
    the receiver of a call (an alias, a helper taking it)."""
    names: set[str] = set()
    for cell in cells:
        if cell.magic is not None:
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            return None  # raised with its notebook line when the cell runs
        receivers = {id(node.func.value) for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        if any(_is_widgets(node) and id(node) not in receivers for node in ast.walk(tree)):
            return None
        for call in filter(None, map(_widget_declaration, ast.walk(tree))):
            name = call.args[0] if call.args else next(
                (k.value for k in call.keywords if k.arg == "name"), None)
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                return None
            names.add(name.value)
    return names or None


def _is_widgets(node: ast.AST) -> bool:
    """node is the expression dbutils.widgets."""
    return (isinstance(node, ast.Attribute) and node.attr == "widgets"
            and isinstance(node.value, ast.Name) and node.value.id == "dbutils")


def _widget_declaration(node: ast.AST) -> ast.Call | None:
    """node if it is a call dbutils.widgets.<text|dropdown|combobox|multiselect>(...)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in WIDGET_KINDS):
        return None
    return node if _is_widgets(node.func.value) else None


class Widgets:
    """dbutils.widgets: declared widgets take their argument's value, else their default."""

    def __init__(self, arguments: dict[str, str]) -> None:
        self._arguments = dict(arguments)
        self._values: dict[str, str] = {}

    def _declare(self, name: str, default: str, choices: Sequence[str] | None = None) -> None:
        value = self._arguments.get(name, default)
        if choices is not None:
            for candidate, what in ((default, "default"), (value, "value")):
                if candidate not in choices:
                    raise WidgetError(f"widget {name!r}: {what} {candidate!r} is not one of "
                                      f"its choices {list(choices)}")
        self._values[name] = str(value)

    def text(self, name: str, defaultValue: str, label: str | None = None) -> None:
        self._declare(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: Sequence[str],
                 label: str | None = None) -> None:
        self._declare(name, defaultValue, choices)

    def combobox(self, name: str, defaultValue: str, choices: Sequence[str],
                 label: str | None = None) -> None:
        self._declare(name, defaultValue)

    def multiselect(self, name: str, defaultValue: str, choices: Sequence[str],
                    label: str | None = None) -> None:
        """Its value is the chosen choices joined by commas (as Databricks gives it)."""
        value = self._arguments.get(name, defaultValue)
        for candidate, what in ((defaultValue, "default"), (value, "value")):
            wrong = [c for c in str(candidate).split(",") if c not in choices]
            if wrong:
                raise WidgetError(f"widget {name!r}: {what} {candidate!r} holds {wrong}, not "
                                  f"among its choices {list(choices)}")
        self._values[name] = str(value)

    def get(self, name: str) -> str:
        if name not in self._values:
            raise WidgetError(f"no input widget named {name!r} is defined; defined widgets are "
                              f"{sorted(self._values)}")
        return self._values[name]

    getArgument = get

    def getAll(self) -> dict[str, str]:
        return dict(self._values)

    def remove(self, name: str) -> None:
        self._values.pop(name, None)

    def removeAll(self) -> None:
        self._values.clear()

    def unused_arguments(self) -> list[str]:
        return sorted(set(self._arguments) - set(self._values))


class NotebookExit(Exception):
    """Raised by dbutils.notebook.exit to end the run with a value."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


class _Notebook:
    def exit(self, value: Any) -> None:
        raise NotebookExit(str(value))

    def run(self, path: str, timeout_seconds: int = 0, arguments: Any = None) -> str:
        raise UnsupportedMagicError(f"dbutils.notebook.run({path!r}) is not supported by the "
                                    "local harness; run that notebook on its own")


@dataclass
class DBUtils:
    """The part of Databricks' dbutils that notebooks here use."""

    widgets: Widgets
    notebook: _Notebook = field(default_factory=_Notebook)


@dataclass
class NotebookRun:
    """What a run left: the exit value, what was displayed, and the widget values."""

    path: Path
    exit_value: str | None = None
    displayed: list[Any] = field(default_factory=list)
    widgets: dict[str, str] = field(default_factory=dict)


class Display:
    """display(): prints a preview of tables and saves matplotlib figures as PNG files."""

    def __init__(self, run: NotebookRun, output_dir: Path | None) -> None:
        self._run, self._output_dir = run, output_dir

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> None:
        from matplotlib.figure import Figure

        if isinstance(obj, DataFrame):
            obj.show(20, truncate=60)
        elif isinstance(obj, Figure):
            obj = self._save(obj)
        else:
            print(obj.to_string() if hasattr(obj, "to_string") else obj)
        self._run.displayed.append(obj)

    def _save(self, figure: Any) -> Path | Any:
        import matplotlib.pyplot as plt

        if self._output_dir is None:
            plt.close(figure)
            return figure
        self._output_dir.mkdir(parents=True, exist_ok=True)
        target = self._output_dir / f"{self._run.path.stem}-{len(self._run.displayed) + 1}.png"
        figure.savefig(target, dpi=80, bbox_inches="tight")
        plt.close(figure)
        return target


def run_notebook(path: Path | str, spark: SparkSession, arguments: dict[str, str] | None = None,
                 output_dir: Path | None = None) -> NotebookRun:
    """Run a source-format notebook top to bottom, as Databricks runs it as a job task.

    Args:
        path: the notebook's .py file.
        spark: the session the notebook sees as `spark`.
        arguments: widget values by name (a job's notebook parameters).
        output_dir: where display() saves figures (none: figures are not saved).

    Returns:
        The run: exit value (dbutils.notebook.exit), displayed objects, widget values.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here: figures go to files
    path = Path(path)
    cells = parse(path)
    for cell in cells:  # refuse before running anything, not half way through
        if cell.magic is not None and cell.magic not in SKIPPED_MAGICS:
            raise UnsupportedMagicError(
                f"{path}: cell {cell.number} (line {cell.line}) uses %{cell.magic}, which the "
                f"local harness cannot run; only Python and %md cells run outside Databricks")
    declared = declared_widgets(cells)
    if declared is not None and set(arguments or {}) - declared:
        raise WidgetError(f"{path}: arguments {sorted(set(arguments or {}) - declared)} match "
                          f"no widget; its widgets are {sorted(declared)}")
    run = NotebookRun(path)
    widgets = Widgets(arguments or {})
    # no __file__: a Databricks notebook has none, and one reading it must fail here too
    namespace: dict[str, Any] = {"__name__": "__main__", "spark": spark,
                                 "dbutils": DBUtils(widgets), "display": Display(run, output_dir)}
    exited_early = False
    try:
        for cell in cells:
            if cell.magic is None:
                _execute(cell, path, namespace)
    except NotebookExit as done:
        run.exit_value = done.value
        exited_early = cell.number < len(cells)
    unused = widgets.unused_arguments()
    # a widget declared under a name only known when run, or removed (after an early exit, a
    # later cell may declare it: the names declared in the source were checked above)
    if unused and not exited_early:
        raise WidgetError(f"{path}: arguments {unused} match no widget; its widgets are "
                          f"{sorted(widgets.getAll())}")
    run.widgets = widgets.getAll()
    return run


def _execute(cell: Cell, path: Path, namespace: dict[str, Any]) -> None:
    # Padded so that tracebacks give the line numbers of the notebook file.
    code = compile("\n" * (cell.line - 1) + cell.source, str(path), "exec")
    try:
        exec(code, namespace)
    except NotebookExit:
        raise
    except Exception as error:
        error.add_note(f"in notebook {path}, cell {cell.number} (from line {cell.line})")
        raise
