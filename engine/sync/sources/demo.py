"""The demo's deterministic source: a registry of sites and their observations.

Record `i` is a pure function of `(seed, i)`, so any run, resumed anywhere,
produces the same data. The cursor is the data itself: the end of the
unbroken run of ids from 1 in each target table, so a batch that failed
while later ones committed leaves a hole the next run fills, instead of a
`max(id)` that jumps over it. Rows are upserted, so writing past a hole
again changes nothing. Registry rows go in ahead of the observations that
reference them (observation `j` may reference registry rows up to
`registry_needed(j)`), so foreign keys hold at every commit. A run is caught
up only when every table holds exactly the rows the source has.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import apsw

from sqlwarden.config import GeneratorSourceConfig
from sqlwarden.db.sql import quote
from sqlwarden.views import Row

_MASK = (1 << 64) - 1
_BASE_EPOCH = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
ORGS = ("Northwind Water", "Alder Grid", "Bluefen Rail", "Cedar Health", "Dunmore Ports",
        "Eastlake Transit", "Fairholm Energy", "Greyrock Mining", "Harrow Farms",
        "Ironbridge Works", "Juniper Telecom", "Kestrel Air", "Lowmoor Forestry",
        "Marlow Utilities", "Northgate Logistics", "Oakshade Parks")
PLACES = ("river", "valley", "harbour", "ridge", "station", "quarry", "junction", "meadow",
          "reservoir", "substation", "depot", "pumphouse", "tower", "weir", "culvert", "yard")
ADJECTIVES = ("north", "south", "upper", "lower", "old", "new", "east", "west", "inner",
              "outer", "high", "little", "great", "far", "near", "middle")
WORDS = ("sensor", "pressure", "flow", "inspection", "maintenance", "valve", "pump", "meter",
         "calibration", "fault", "alarm", "battery", "replaced", "cleaned", "leak", "corrosion",
         "temperature", "humidity", "reading", "drift", "firmware", "upgrade", "signal",
         "antenna", "cabinet", "seal", "gasket", "filter", "sediment", "overflow", "storm",
         "flood", "drought", "survey", "permit", "contractor", "scheduled", "urgent", "routine",
         "quarterly", "annual", "report", "logged", "verified", "pending", "closed", "opened",
         "crew", "visit", "access", "road", "bridge", "fence", "gate", "lock", "power", "outage",
         "generator", "solar", "panel", "wind", "turbine", "cable", "trench", "pipe", "main",
         "hydrant", "tank", "level", "overflowing", "dry", "noise", "vibration", "bearing",
         "motor", "controller", "network", "gateway", "modem", "backup", "restored", "offline")
UNITS = ("kPa", "degC", "mm", "m3/h", "ppm", "V", "A", "%RH")
#: The UCUM codes the demo's `observation_units` task rewrites old spellings to.
UCUM_UNITS = {"degC": "Cel", "%RH": "%"}


def ucum_units(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demo's normalising task: each row's unit as a UCUM code."""
    return [{"unit": UCUM_UNITS.get(row["unit"], row["unit"])} for row in rows]


def _mix(*values: int) -> int:
    """A 64-bit hash of small integers (splitmix64 steps), stable across runs."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & _MASK)) & _MASK
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        x ^= x >> 31
    return x


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_BASE_EPOCH + seconds))


class DemoGenerator:
    """Produces registry and observation rows as pure functions of their ids."""

    def __init__(self, source: GeneratorSourceConfig) -> None:
        self.source = source
        self.seed = source.seed

    def registry_row(self, i: int) -> Row:
        """(id, org, name, body, updated_at) of registry record `i`."""
        h = _mix(self.seed, 1, i)
        org = ORGS[h % len(ORGS)]
        name = (f"{ADJECTIVES[(h >> 8) % len(ADJECTIVES)]} "
                f"{PLACES[(h >> 16) % len(PLACES)]} site {i}")
        words = 8 + (h >> 24) % 14
        body = " ".join(WORDS[_mix(self.seed, 2, i, k) % len(WORDS)] for k in range(words))
        return (i, org, name, body.capitalize() + ".", _iso(i * 60))

    def observation_row(self, j: int) -> Row:
        """(id, registry_id, observed_at, value, unit) of observation `j`."""
        h = _mix(self.seed, 3, j)
        registry_id = 1 + h % self.registry_needed(j)
        value = round(((h >> 20) % 1_000_000) / 100, 2)
        return (j, registry_id, _iso(j * 5), value, UNITS[(h >> 44) % len(UNITS)])

    def registry_needed(self, j: int) -> int:
        """How many registry rows must exist before observation `j` is written."""
        total_obs = self.source.observation_rows
        total_reg = self.source.registry_rows
        if total_obs == 0:
            return total_reg
        return max(1, min(total_reg, -(-j * total_reg // total_obs)))


class Reads(Protocol):
    """The part of the engine these helpers need (the facade satisfies it)."""

    def read(self, timeout: float | None = None) -> AbstractContextManager[apsw.Connection]: ...


def cursor(engine: Reads, source: GeneratorSourceConfig) -> tuple[int, int]:
    """How far each table holds every id from 1 on: where the next run goes on from."""
    with engine.read() as conn:
        return cursor_of(conn, source)


def cursor_of(conn: apsw.Connection, source: GeneratorSourceConfig) -> tuple[int, int]:
    return (_unbroken_end(conn, source.registry_table),
            _unbroken_end(conn, source.observations_table))


def _unbroken_end(conn: apsw.Connection, table: str) -> int:
    count, top = conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {quote(table)}").get
    if count == top:
        return int(top)
    if conn.execute(f"SELECT 1 FROM {quote(table)} WHERE id = 1").get is None:
        return 0
    # A hole: the smallest id whose successor is missing ends the unbroken run.
    return int(conn.execute(
        f"SELECT min(a.id) FROM {quote(table)} AS a WHERE NOT EXISTS "
        f"(SELECT 1 FROM {quote(table)} AS b WHERE b.id = a.id + 1)").get)


def complete(engine: Reads, source: GeneratorSourceConfig) -> bool:
    """True when every table holds exactly the rows the source has."""
    with engine.read() as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {quote(t)}").get
                  for t in (source.registry_table, source.observations_table)]
    return counts == [source.registry_rows, source.observation_rows]
