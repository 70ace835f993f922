"""The file ledger of a bronze table: which landed files it has read, kept exactly once.

A folder of small JSON files next to the table's other checkpoints:
  <batch>.plan.json  written before a batch is read: the ledger's id, the batch, its files;
  <batch>.done.json  written after the batch's Delta commit: every file read so far.
A batch is planned only when the one before it is done, so at most one plan is open: the run
that wrote it was interrupted, and the next run takes that batch again before it plans new
ones; whether it reached its Delta commit is for the caller to find out (the commit carries
the ledger's id and the batch). Ledger files are created, never replaced: a second run
planning the same batch at the same time fails. One writer per table is assumed: a run
started while another is writing a batch would take that batch as left open (a scheduler
must not overlap bronze runs). This is what a Structured Streaming file source's checkpoint
keeps (its offset log and commit log), without starting a streaming query: a new day's run
costs what the new day costs.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from pyspark.sql import SparkSession

from lakehouse import tables

# A large backlog (the first run over a year of drops) is read in batches of this many files.
MAX_FILES_PER_BATCH = 400
# Batches whose ledger files are kept (the newest done file holds the whole ledger; the older
# ones help to see what happened).
KEEP_DONE = 10
LEDGER_FILE = re.compile(r"^(\d+)\.(plan|done)\.json$")


@dataclass(frozen=True)
class LandedFile:
    path: str  # URI, as listed
    modified: int  # ms since the epoch
    size: int


@dataclass(frozen=True)
class Batch:
    id: int
    files: tuple[LandedFile, ...]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


class LedgerError(RuntimeError):
    """The ledger folder holds something this version cannot continue from."""


class FileLedger:
    """The landed files a bronze table has read, and the batch an interrupted run left open."""

    def __init__(self, spark: SparkSession, folder: str) -> None:
        self.spark = spark
        self.folder = folder.rstrip("/")
        batches: dict[str, list[int]] = {"plan": [], "done": []}
        for path, _, _ in tables.list_files(spark, self.folder):
            match = LEDGER_FILE.match(path.rsplit("/", 1)[-1])
            if match:
                batches[match[2]].append(int(match[1]))
        self.last_done = max(batches["done"], default=-1)
        state = self._load(self.last_done, "done") if self.last_done >= 0 else {}
        self.read = {path: LandedFile(path, *kept) for path, kept in state.get("files", {}).items()}
        self.open: Batch | None = None
        last_plan = max(batches["plan"], default=-1)
        if last_plan > self.last_done:
            plan = self._load(last_plan, "plan")
            state = state or plan
            try:
                self.open = Batch(last_plan, tuple(LandedFile(*f) for f in plan["files"]))
            except TypeError as error:
                raise LedgerError(f"{self._file(last_plan, 'plan')} is not a ledger file: "
                                  f"each file should be [path, modified, size]") from error
        self.id = str(state.get("ledger") or uuid.uuid4().hex)

    def _file(self, batch: int, kind: str) -> str:
        return f"{self.folder}/{batch:020d}.{kind}.json"

    def _load(self, batch: int, kind: str) -> dict:  # type: ignore[type-arg]
        name = self._file(batch, kind)
        text = tables.read_text(self.spark, name)
        if text is None:
            raise LedgerError(f"{name} was listed but cannot be read")
        try:
            state = json.loads(text)
        except ValueError as error:
            raise LedgerError(f"{name} is not a ledger file: {error}") from error
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        if not isinstance(state, dict) or not {"ledger", "batch", "files"} <= set(state):
            raise LedgerError(f"{name} is not a ledger file: expected the keys ['batch', "
                              f"'files', 'ledger'], found {found}")
        return state

    def _create(self, batch: int, kind: str, state: dict) -> None:  # type: ignore[type-arg]
        try:
            tables.create_text(self.spark, self._file(batch, kind), json.dumps(state))
        except FileExistsError as error:
            raise LedgerError(f"{self._file(batch, kind)} was written by another run while this "
                              "one ran: two runs of one bronze table overlapped") from error

    @property
    def empty(self) -> bool:
        """No batch planned yet."""
        return self.last_done < 0 and self.open is None

    def take_open(self, listing: list[LandedFile], committed: bool) -> list[str]:
        """Take the open batch again; return its planned paths that are no longer listed.

        Not committed: it is read as its files are now (gone ones dropped). Committed: it
        stays as planned, what its commit read; later changes to its files get named.
        """
        if self.open is None:
            raise LedgerError(f"no batch is open under {self.folder}")
        now = {f.path: f for f in listing}
        gone = [f.path for f in self.open.files if f.path not in now]
        if not committed:
            self.open = Batch(self.open.id, tuple(now[f.path] for f in self.open.files
                                                  if f.path in now))
        return gone

    def changed(self, listing: list[LandedFile]) -> list[LandedFile]:
        """Files read before that have changed since (a file is read once: they are not read
        again)."""
        return [f for f in listing if f.path in self.read and self.read[f.path] != f]

    def plan(self, listing: list[LandedFile]) -> Batch | None:
        """Record the next batch of unread files (oldest first) before it is read; None when
        every listed file has been read."""
        if self.open is not None:
            raise LedgerError(f"batch {self.open.id} under {self.folder} is still open")
        new = sorted((f for f in listing if f.path not in self.read),
                     key=lambda f: (f.modified, f.path))[:MAX_FILES_PER_BATCH]
        if not new:
            return None
        batch = Batch(self.last_done + 1, tuple(new))
        self._create(batch.id, "plan", {"ledger": self.id, "batch": batch.id, "files": [
            [f.path, f.modified, f.size] for f in batch.files]})
        self.open = batch
        return batch

    def done(self, batch: Batch) -> None:
        """Record the batch as read (after its Delta commit), each file as it was when read."""
        if self.open != batch:
            raise LedgerError(f"batch {batch.id} is not the open batch under {self.folder}")
        self.read.update({f.path: f for f in batch.files})
        self._create(batch.id, "done", {"ledger": self.id, "batch": batch.id, "files": {
            f.path: [f.modified, f.size] for f in self.read.values()}})
        self.last_done, self.open = batch.id, None
        old = batch.id - KEEP_DONE
        if old >= 0:
            tables.delete_file(self.spark, self._file(old, "done"))
            tables.delete_file(self.spark, self._file(old, "plan"))
