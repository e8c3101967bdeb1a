"""Mailing upload parse: `mailing.parse` over a stored CSV against a bare `COPY` of the same file.

The file: a header `email` and N rows (1,000,000; quick: 100,000), ~5% invalid (no @-sign,
nothing before or after it, a space, two dots, a dotless domain), ~5% duplicates (an earlier
address again with its case changed), 0.5% non-ASCII addresses, the rest plain addresses. It is
stored as 1 MiB `mailing_chunks` of a PARSING mailing, as the API stores an upload.

relaybox: `MailingParseHandler.handle` in a child process (`python -m bench.mailing_ingest
--parse-child`), timed around the call; its peak RSS is the child's VmHWM (/proc/self/status),
cross-checked with `getrusage(RUSAGE_CHILDREN)` in this process. Afterwards the mailing must be
RUNNING with exactly the generated counts, or the run does not count (exit 2).
Baseline: asyncpg `copy_to_table` of the same file into a bare one-column table (no index, no
check), in this process. Each round (3; quick: 1) starts from emptied tables; medians are
reported, and the CPU per row of the parsing process and of its PostgreSQL backends (steadier
than rows/s on a shared machine). Targets: >= 50,000 rows/s and a peak RSS < 200 MB; the ratio
parse/COPY (seconds) is reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bench.common import (
    REPO_ROOT,
    BenchError,
    Result,
    Target,
    base_parser,
    bench_database,
    emit_json,
    median,
    postgres_backends,
    render_table,
    run_id,
)
from relaybox.common.db.session import asyncpg_dsn, dispose
from relaybox.consumer.mailings.ingest import MailingParseSettings

ROWS = 1_000_000
QUICK_ROWS = 100_000
CHUNK_BYTES = 1 << 20
TARGET_RPS = 50_000.0
TARGET_RSS_MB = 200.0
CHILD_TIMEOUT_S = 900.0
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "company.co.uk", "example.org", "mail.io")
# Rows i with i % 20 == INVALID are invalid, i % 20 == DUPLICATE repeat an earlier address.
INVALID, DUPLICATE = 7, 13
INVALID_TEMPLATES = (
    "user{i}.example.com",
    "user{i}@",
    "@domain{i}.com",
    "user {i}@example.com",
    "user{i}@example..com",
    "user{i}@localhost",
)


@dataclass(frozen=True)
class Generated:
    path: Path
    rows: int
    invalid: int
    duplicates: int
    size: int

    @property
    def valid(self) -> int:
        return self.rows - self.invalid - self.duplicates


def address(i: int) -> str:
    """The i-th distinct valid address (0.5% non-ASCII, some with capitals or a +tag)."""
    domain = DOMAINS[i % len(DOMAINS)]
    if i % 200 == 3:
        return f"josé.{i}@exemple.fr"
    if i % 10 == 1:
        return f"First.Last{i}+news@{domain.upper()}"
    return f"user.{i}@{domain}"


def generate(directory: Path, rows: int, seed: int = 7) -> Generated:
    """Write the CSV; the counts are known by construction."""
    rnd = random.Random(seed)
    path = directory / "mailing.csv"
    invalid = duplicates = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email\r\n")
        lines: list[str] = []
        for i in range(rows):
            kind = i % 20
            if kind == INVALID:
                invalid += 1
                lines.append(INVALID_TEMPLATES[i % len(INVALID_TEMPLATES)].format(i=i))
            elif kind == DUPLICATE:
                duplicates += 1
                earlier = 20 * rnd.randrange(i // 20 + 1)  # i % 20 == 0: a plain valid row
                lines.append(address(earlier).upper())
            else:
                lines.append(address(i))
            if len(lines) >= 10_000:
                out.write("\r\n".join(lines) + "\r\n")
                lines.clear()
        out.write("\r\n".join(lines) + ("\r\n" if lines else ""))
    return Generated(path, rows, invalid, duplicates, path.stat().st_size)


async def store_upload(dsn: str, generated: Generated) -> uuid.UUID:
    """A PARSING mailing with the file in 1 MiB chunks, read from disk one chunk at a time."""
    mailing_id = uuid.uuid4()
    digest = hashlib.sha256()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO mailings (id, tenant_id, subject, body_template, file_name,"
                " file_sha256, file_bytes) VALUES ($1, 'bench', 'Bench', 'Hi {token}',"
                " 'mailing.csv', '', $2)",
                mailing_id,
                generated.size,
            )
            with generated.path.open("rb") as source:
                seq = 0
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    await conn.execute(
                        "INSERT INTO mailing_chunks (mailing_id, seq, data) VALUES ($1, $2, $3)",
                        mailing_id,
                        seq,
                        chunk,
                    )
                    seq += 1
            await conn.execute(
                "UPDATE mailings SET file_sha256 = $2 WHERE id = $1", mailing_id, digest.hexdigest()
            )
        await conn.execute("VACUUM ANALYZE mailing_chunks")
    finally:
        await conn.close()
    return mailing_id


async def copy_baseline(dsn: str, generated: Generated) -> tuple[float, int]:
    """COPY the file into a bare one-column table: (seconds, rows)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE copy_baseline (email text)")
        started = time.perf_counter()
        status = await conn.copy_to_table(
            "copy_baseline", source=str(generated.path), format="csv", header=True
        )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return seconds, int(status.split()[-1])


# -- the child process: the real handler, its time and memory ---------------------------------


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def parse_child(database_url: str, mailing_id: str) -> None:
    """Run `mailing.parse` once and print one JSON line: outcome, seconds, CPU, memory."""
    from relaybox.common.db.session import create_engine
    from relaybox.common.settings import DatabaseSettings
    from relaybox.consumer.mailings.handler import MailingParseHandler
    from relaybox.consumer.settings import ConsumerSettings

    database_name = make_url(database_url).database or ""

    async def parse() -> dict[str, Any]:
        database = DatabaseSettings(url=database_url)  # the consumer's pool
        engine = create_engine(database)
        handler = MailingParseHandler(engine, ConsumerSettings(database=database))
        rss_before = _status_kb("VmRSS")
        backends_before = postgres_backends(database_name)
        cpu_before = time.process_time()
        started = time.perf_counter()
        try:
            outcome = await handler.handle({"id": mailing_id}, {})
            seconds = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_before
            # The pool keeps the parse's connections open: their backends' CPU is the SQL's.
            backends = postgres_backends(database_name)
        finally:
            await dispose(engine)
        return {
            "outcome": outcome,
            "seconds": seconds,
            "cpu_s": cpu_s,
            "postgres_cpu_s": sum(v - backends_before.get(p, 0.0) for p, v in backends.items()),
            "rss_before_kb": rss_before,
        }

    report = asyncio.run(parse())
    report["vmhwm_kb"] = _status_kb("VmHWM")
    report["ru_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(report), flush=True)


def run_parse_child(database_url: str, mailing_id: uuid.UUID) -> dict[str, Any]:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.mailing_ingest",
            "--parse-child",
            database_url,
            str(mailing_id),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if process.returncode != 0:
        raise BenchError(f"the parse child failed:\n{process.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(process.stdout.strip().splitlines()[-1])
    report["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return report


async def stored_counts(dsn: str, mailing_id: uuid.UUID) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT status, rows_total, valid_count, invalid_count, duplicate_count, parsed_chunks,"
            " (SELECT count(*) FROM mailing_recipients WHERE mailing_id = $1) AS recipients,"
            " (SELECT count(*) FROM mailing_errors WHERE mailing_id = $1) AS errors,"
            " (SELECT count(*) FROM mailing_chunks WHERE mailing_id = $1) AS chunks"
            " FROM mailings WHERE id = $1",
            mailing_id,
        )
    finally:
        await conn.close()
    if row is None:
        raise BenchError("the mailing row is gone")
    return dict(row)


def verify(found: dict[str, Any], generated: Generated, copied: int) -> list[str]:
    """What does not match the file (empty when all is right)."""
    expected = {
        "status": "RUNNING",
        "rows_total": generated.rows,
        "valid_count": generated.valid,
        "invalid_count": generated.invalid,
        "duplicate_count": generated.duplicates,
        "recipients": generated.valid,
        "errors": generated.invalid,
        "parsed_chunks": found["chunks"],
    }
    problems = [f"{k} = {found[k]!r}, expected {v!r}" for k, v in expected.items() if found[k] != v]
    if copied != generated.rows:
        problems.append(f"COPY stored {copied} rows, expected {generated.rows}")
    return problems


@dataclass(frozen=True)
class Round:
    """One round: the parse child's report, the COPY baseline and what was stored."""

    parse: dict[str, Any]
    copy_s: float
    found: dict[str, Any]

    @property
    def parse_s(self) -> float:
        return float(self.parse["seconds"])

    @property
    def peak_mb(self) -> float:
        return max(float(self.parse["vmhwm_kb"] or 0), float(self.parse["ru_maxrss_kb"])) / 1024


def summarize(generated: Generated, rounds: list[Round]) -> Result:
    mb = generated.size / 1e6
    rows = generated.rows
    limits = MailingParseSettings()
    parse_s = median([r.parse_s for r in rounds])
    copy_s = median([r.copy_s for r in rounds])
    peak_mb = max(r.peak_mb for r in rounds)
    cpu_s = median([float(r.parse["cpu_s"]) for r in rounds])
    pg_cpu_s = median([float(r.parse["postgres_cpu_s"]) for r in rounds])
    before_mb = max(float(r.parse["rss_before_kb"] or 0) for r in rounds) / 1024
    found = rounds[-1].found
    metrics = {
        "rows": rows,
        "rounds": len(rounds),
        "file_mb": round(mb, 1),
        "chunks": found["chunks"],
        "parse_s": round(parse_s, 3),
        "rows_per_s": round(rows / parse_s),
        "parse_cpu_s": round(cpu_s, 3),
        "postgres_cpu_s": round(pg_cpu_s, 3),
        "cpu_us_per_row": round((cpu_s + pg_cpu_s) / rows * 1e6, 2),
        "copy_s": round(copy_s, 3),
        "copy_rows_per_s": round(rows / copy_s),
        "ratio_parse_over_copy": round(parse_s / copy_s, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_parse_mb": round(before_mb, 1),
        "valid": found["valid_count"],
        "invalid": found["invalid_count"],
        "duplicates": found["duplicate_count"],
    }
    table = [
        ["mailing.parse (relaybox)", rows, parse_s, rows / parse_s, mb / parse_s, peak_mb],
        ["COPY into a bare table", rows, copy_s, rows / copy_s, mb / copy_s, "-"],
    ]
    per_round = ", ".join(f"{rows / r.parse_s:,.0f}" for r in rounds)
    notes = [
        f"medians of {len(rounds)} round(s); parse rows/s per round: {per_round}",
        f"ratio parse/COPY = {parse_s / copy_s:.2f} (seconds; the parse also decodes, checks "
        "every address, de-duplicates and writes two indexed tables)",
        f"CPU per row: {cpu_s / rows * 1e6:.1f} µs in the parsing process + "
        f"{pg_cpu_s / rows * 1e6:.1f} µs in its PostgreSQL backends (steadier than rows/s on "
        "a shared machine)",
        f"parse child: RSS {before_mb:.0f} MB before the parse (interpreter + imports), peak "
        f"{peak_mb:.0f} MB (VmHWM; RUSAGE_CHILDREN max "
        f"{max(float(r.parse['children_maxrss_kb']) for r in rounds) / 1024:.0f} MB)",
        f"file: {mb:.1f} MB in {found['chunks']} chunks of 1 MiB; {found['valid_count']:,} "
        f"valid, {found['invalid_count']:,} invalid, {found['duplicate_count']:,} duplicates "
        "(as generated)",
        f"parse settings: batches of {limits.batch_size:,} rows on {limits.writers} writer "
        "connections (MailingParseSettings defaults)",
    ]
    return Result(
        name="mailing_ingest",
        columns=["run", "rows", "seconds", "rows/s", "MB/s", "peak RSS MB"],
        rows=table,
        metrics=metrics,
        targets=[
            Target("rows_per_s", ">=", TARGET_RPS),
            Target("peak_rss_mb", "<", TARGET_RSS_MB),
        ],
        notes=notes,
    )


async def reset(dsn: str) -> None:
    """Empty the mailing tables between rounds (each round starts from the same sizes)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS copy_baseline;"
            " TRUNCATE mailing_errors, mailing_recipients, mailing_chunks, mailings"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def one_round(database_url: str, generated: Generated) -> Round:
    dsn = asyncpg_dsn(database_url)
    asyncio.run(asyncio.wait_for(reset(dsn), 120))
    mailing_id = asyncio.run(asyncio.wait_for(store_upload(dsn, generated), 300))
    copy_s, copied = asyncio.run(asyncio.wait_for(copy_baseline(dsn, generated), 300))
    parse = run_parse_child(database_url, mailing_id)
    found = asyncio.run(asyncio.wait_for(stored_counts(dsn, mailing_id), 60))
    if parse["outcome"] != "parsed":
        raise BenchError(f"the parse ended {parse['outcome']!r}")
    problems = verify(found, generated, copied)
    if problems:
        raise BenchError("the stored mailing does not match the file: " + "; ".join(problems))
    return Round(parse, copy_s, found)


def run(*, quick: bool = False, rows: int | None = None, rounds: int | None = None) -> Result:
    count = rows or (QUICK_ROWS if quick else ROWS)
    laps = rounds or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="relaybox-bench-") as tmp:
        generated = generate(Path(tmp), count)
        with bench_database(f"mailing_{run_id()}") as database_url:
            results = [one_round(database_url, generated) for _ in range(laps)]
    return summarize(generated, results)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--parse-child"]:
        parse_child(argv[1], argv[2])
        return 0
    parser = base_parser(__doc__ or "")
    parser.add_argument("--rows", type=int, default=None, help="data rows (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick: 1)")
    args = parser.parse_args(argv)
    try:
        result = run(quick=args.quick, rows=args.rows, rounds=args.rounds)
    except (BenchError, OSError, TimeoutError, asyncpg.PostgresError, SQLAlchemyError) as exc:
        print(f"mailing_ingest could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        emit_json({"bench": "mailing_ingest", "ok": False, "error": f"{type(exc).__name__}"})
        return 2
    render_table(result)
    emit_json(result.as_json())
    return 1 if args.check and not result.ok else 0


if __name__ == "__main__":
    sys.exit(main())
