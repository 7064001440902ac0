"""The generator reader: the demo's deterministic rows, in batches (see `demo`)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlwarden.config import GENERATOR_COLUMNS, GeneratorSourceConfig
from sqlwarden.protocol import TableRows
from sqlwarden.sync.sources.base import Backlog, Prepared
from sqlwarden.sync.sources.demo import DemoGenerator


class GeneratorReader:
    """The demo's rows from the first id each table lacks (see `demo`)."""

    def __init__(self, source: GeneratorSourceConfig, cursor: tuple[int, int]) -> None:
        self.source = source
        self.gen = DemoGenerator(source)
        self.reg_done, self.obs_done = cursor
        self.note: str | None = None

    def backlog(self) -> Backlog:
        rows = ((self.source.registry_rows - self.reg_done)
                + (self.source.observation_rows - self.obs_done))
        return Backlog(rows, f"{rows:,} rows to generate")

    def batches(self) -> Iterator[Prepared]:
        s = self.source
        for first in range(self.obs_done + 1, s.observation_rows + 1, s.batch_rows):
            last = min(s.observation_rows, first + s.batch_rows - 1)
            batch = Prepared()
            # Registry rows go first, so every observation's reference exists.
            need = self.gen.registry_needed(last)
            if need > self.reg_done:
                batch.tables.append(self._registry_up_to(need))
            batch.tables.append(TableRows(
                table=s.observations_table, columns=GENERATOR_COLUMNS["observations_table"],
                key=("id",),
                rows=tuple(self.gen.observation_row(j) for j in range(first, last + 1))))
            yield batch
        while self.reg_done < s.registry_rows:
            yield Prepared(tables=[self._registry_up_to(
                min(s.registry_rows, self.reg_done + s.batch_rows))])

    def _registry_up_to(self, last: int) -> TableRows:
        """The registry rows after the last one generated, up to id `last`."""
        rows = tuple(self.gen.registry_row(i) for i in range(self.reg_done + 1, last + 1))
        self.reg_done = last
        return TableRows(table=self.source.registry_table,
                         columns=GENERATOR_COLUMNS["registry_table"], key=("id",), rows=rows)
