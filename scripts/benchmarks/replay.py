"""`scripts/bench replay [--records N] [--repeat N] [--json PATH] [--workdir DIR]`

`sqlwarden replay` over a made-up message log of a busy engine: N records
(1,000,000 by default; at least 20,000) from a seeded event simulation of
two engine runs (the second continues the seq), about 20,000 records a
second of log time, rotated at 64 MB into messages.jsonl.3 ... .1 and
messages.jsonl. Mostly facade writer.execute asks, answered by a Writer
that takes asks in arrival order and joins foreground writes into group
commits; with them a source pumping writer.sync_batch asks (three
unanswered at most), a backfill of two tasks (one writer.chunk in flight,
progress saved at most once a second plus the terminal save), the mirror's
worker (a reconcile at boot, a verify halfway, outbox drains), status
polls, one FTS deferral and its restore, and a few failed writes. The log
must pass `--check` (untimed) before anything is timed. Two cases, each a
fresh interpreter timed from start to exit, peak RSS from wait4's
ru_maxrss: `summary` (`replay LOG --json`, which must count N records in
seq 1..N, none damaged) and `check` (`replay LOG --check --json`, which
must exit 0 with no violations). JSON keys: summary_msgs_s, check_msgs_s,
peak_rss_mb (the largest of the runs) (a contract; targets: both rates >=
100,000 msgs/s, peak_rss_mb <= 100), plus the log, the mix, a 1,000-record
baseline run and the runs under `details`.

The log is made by replay_log.py (on replay_sim.py and replay_source.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    ROOT,
    Result,
    add_output_options,
    alternating,
    best_of,
    in_workdir,
    mark_best,
    met,
    run_measured,
)
from .replay_log import ReplayLog
from .replay_sim import REPLAY_EPOCH_US, REPLAY_FILE_BYTES, REPLAY_SEED, replay_fail

NAME = "replay"
HELP = "sqlwarden replay's summary and --check over a generated busy engine's message log"
REPLAY_RECORDS = 1_000_000
#: Fewer leave no room for two runs' boots and stops.
REPLAY_MIN_RECORDS = 20_000
REPLAY_CASES = ("summary", "check")
REPLAY_MSGS_TARGET = 100_000
REPLAY_RSS_TARGET_MB = 100.0
#: Records of the log `baseline` runs the summary over: interpreter start and imports.
REPLAY_BASELINE_RECORDS = 1_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=REPLAY_RECORDS,
                        help="records in the generated log (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case; the fastest counts (default: %(default)s)")
    add_output_options(parser, NAME, workdir="where the log goes, kept there (default: a "
                       "temporary directory, removed afterwards)")


def usage_error(args: argparse.Namespace) -> str | None:
    if args.records < REPLAY_MIN_RECORDS or args.repeat < 1:
        return f"--records must be at least {REPLAY_MIN_RECORDS:,} and --repeat positive"
    return None


def write_replay_log(base: Path, records: int) -> dict[str, Any]:
    """Generate the log into `base`'s directory (emptied first); what was made, and how fast."""
    if base.parent.exists():
        shutil.rmtree(base.parent)
    base.parent.mkdir(parents=True)
    started = time.perf_counter()
    log = ReplayLog(base, records)
    files = log.generate()
    seconds = time.perf_counter() - started
    if log.seq != records:
        raise replay_fail(f"the generator wrote {log.seq:,} records, expected {records:,}")
    span_s = (log.last_ts - REPLAY_EPOCH_US) / 1e6
    return {"records": records, "bytes": log.files.bytes,
            "mb": round(log.files.bytes / 1024 / 1024, 1),
            "files": [{"name": f.name, "mb": round(f.stat().st_size / 1024 / 1024, 1)}
                      for f in files],
            "runs": log.runs, "span_s": round(span_s, 3),
            "records_per_log_s": round(records / span_s),
            "generator_s": round(seconds, 2), "generator_records_s": round(records / seconds)}


def run_replay_case(case: str, base: Path, out: Path) -> dict[str, Any]:
    """`python -m sqlwarden replay LOG --json` (summary) or with `--check`, in a fresh
    interpreter: wall time, peak RSS (ru_maxrss from wait4), exit status and the parsed
    output."""
    command = [sys.executable, "-m", "sqlwarden", "replay", str(base), "--json"]
    if case == "check":
        command.append("--check")
    done = run_measured(command, out, cwd=ROOT)
    try:
        output = json.loads(out.read_text())
    except ValueError:
        raise replay_fail(f"`replay {'--check' if case == 'check' else '--json'}` exited "
                          f"{done.returncode} without JSON output (its stderr is above)"
                          ) from None
    finally:
        out.unlink(missing_ok=True)
    return {"case": case, "seconds": done.seconds, "peak_rss_mb": round(done.peak_rss_mb, 1),
            "exit": done.returncode, "output": output}


def replay_lines(files: Sequence[Path], seqs: set[int]) -> list[str]:
    """The log lines holding records `seqs`, as written."""
    found = []
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                seq = int(raw[7:raw.index(b",")])
                if seq in seqs:
                    found.append(raw.decode().rstrip())
    return found


def check_replay_summary(run: dict[str, Any], records: int, files: int) -> None:
    output = run["output"]
    got = (output["records"], output["first_seq"], output["last_seq"], output["damaged"],
           len(output["files"]))
    if run["exit"] != 0 or got != (records, 1, records, 0, files):
        raise replay_fail(f"the summary exited {run['exit']} and counted {got[0]:,} records, "
                          f"seq {got[1]}..{got[2]}, {got[3]:,} damaged lines, {got[4]} files; "
                          f"expected {records:,} records, seq 1..{records}, none damaged, "
                          f"{files} files")


def check_replay_check(run: dict[str, Any], records: int, files: Sequence[Path]) -> None:
    output = run["output"]
    if run["exit"] == 0 and output["violations"] == 0 and output["records"] == records:
        return
    shown = output.get("shown", [])[:5]
    lines = replay_lines(files, {seq for v in shown for seq in v["seqs"]})
    raise replay_fail(
        f"--check exited {run['exit']} with {output['violations']:,} violations in "
        f"{output['records']:,} records (expected none in {records:,}); per rule "
        f"{output['per_rule']}:\n" + "\n".join(
            f"  rule {v['rule']} at seq {v['seqs']}: {v['text']}" for v in shown)
        + "\nrecords:\n" + "\n".join(f"  {line}" for line in lines))


def run(args: argparse.Namespace) -> Result:
    return in_workdir(args, _bench_replay)


def _bench_replay(args: argparse.Namespace, workdir: Path) -> Result:
    base = workdir / "replay-log" / "messages.jsonl"
    out = workdir / "replay-output.json"
    log = write_replay_log(base, args.records)
    files = log_files_of(base)
    print(f"  generated {log['records']:,} records, {log['mb']:,.0f} MB in "
          f"{plural(len(files), 'file')}, in {log['generator_s']:.1f} s", file=sys.stderr)
    # Untimed: the log must be valid before anything is timed (and is then cached).
    validation = run_replay_case("check", base, out)
    check_replay_check(validation, args.records, files)
    baseline_base = workdir / "replay-baseline" / "messages.jsonl"
    baseline_base.parent.mkdir(parents=True, exist_ok=True)
    with files[0].open("rb") as source:
        baseline_base.write_bytes(b"".join(itertools.islice(source, REPLAY_BASELINE_RECORDS)))
    baseline = run_replay_case("summary", baseline_base, out)
    shutil.rmtree(baseline_base.parent)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeat):
        for case in alternating(REPLAY_CASES, repeat):
            run = run_replay_case(case, base, out)
            if case == "summary":
                check_replay_summary(run, args.records, len(files))
            else:
                check_replay_check(run, args.records, files)
            run["msgs_s"] = round(args.records / run["seconds"], 1)
            runs.append(run)
            print(f"  {case}: {run['seconds']:.2f} s, {run['msgs_s']:,.0f} msgs/s, peak "
                  f"RSS {run['peak_rss_mb']:.0f} MB", file=sys.stderr)
    best = mark_best(runs, lambda run: run["seconds"])
    summary = best["summary"]["output"]
    for run in runs:
        del run["output"]
    return {
        "summary_msgs_s": best["summary"]["msgs_s"],
        "check_msgs_s": best["check"]["msgs_s"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "details": {
            "bench": "replay",
            "summary_s": best["summary"]["seconds"],
            "check_s": best["check"]["seconds"],
            "baseline": {"records": REPLAY_BASELINE_RECORDS,
                         "seconds": round(baseline["seconds"], 3),
                         "peak_rss_mb": baseline["peak_rss_mb"]},
            "log": log,
            "mix": {kind: m["sent"] for kind, m in sorted(
                summary["messages"].items(), key=lambda item: -item[1]["sent"])},
            "errors": sum(e["count"] for e in summary["errors"]),
            "notes": validation["output"]["notes"],
            "command": "python -m sqlwarden replay LOG --json [--check]",
            "params": {"records": args.records, "repeat": args.repeat,
                       "file_mb": REPLAY_FILE_BYTES // 1024 // 1024, "seed": REPLAY_SEED},
            "runs": runs,
            "python": sys.version.split()[0],
        },
    }


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def log_files_of(base: Path) -> list[Path]:
    """`base` and its rotated files, oldest first (as the generator named them)."""
    rotated = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, base]


def report(result: Result) -> None:
    details = result["details"]
    log, params = details["log"], details["params"]
    print(f"bench replay: {log['records']:,} records ({log['mb']:,.0f} MB in "
          f"{plural(len(log['files']), 'file')} of at most {params['file_mb']} MB, "
          f"{len(log['runs'])} runs, {log['span_s']:.1f} s of log time, "
          f"{plural(details['errors'], 'error')}) generated in {log['generator_s']:.1f} s; "
          f"each case in its own process, best of {params['repeat']}")
    best = best_of(details["runs"])
    labels = {"summary": "summary (replay LOG --json)", "check": "check (replay LOG --check)"}
    print(f"{'case':<30} {'records':>10} {'seconds':>9} {'msgs/s':>10} {'peak RSS MB':>12}")
    for case in REPLAY_CASES:
        run = best[case]
        print(f"{labels[case]:<30} {log['records']:>10,} {run['seconds']:>9.2f} "
              f"{run['msgs_s']:>10,.0f} {run['peak_rss_mb']:>12.0f}")
    baseline = details["baseline"]
    print(f"{'  baseline (summary, ' + format(baseline['records'], ',') + ')':<30} "
          f"{baseline['records']:>10,} {baseline['seconds']:>9.2f} {'':>10} "
          f"{baseline['peak_rss_mb']:>12.0f}")

    def rate(name: str, value: float) -> str:
        return (f"{name} {value:,.0f} msgs/s (target >= {REPLAY_MSGS_TARGET:,}: "
                f"{met(value >= REPLAY_MSGS_TARGET)})")

    rss = result["peak_rss_mb"]
    print(f"{rate('summary', result['summary_msgs_s'])}   "
          f"{rate('check', result['check_msgs_s'])}   peak RSS {rss:.0f} MB (target <= "
          f"{REPLAY_RSS_TARGET_MB:.0f}: {met(rss <= REPLAY_RSS_TARGET_MB)})")
    print(f"checks: the summary counted {log['records']:,} records, seq 1..{log['records']}, "
          f"in {plural(len(log['files']), 'file')}, none damaged; --check found no violations")
