"""The ``thrifty`` command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from thrifty.ledger.queries import SpendReport, SpendRow


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="thrifty", prog_name="thrifty")
def main() -> None:
    """thrifty: cheaper, more reliable LLM calls, with every token accounted for."""


@main.command()
@click.option("--host", default=None, help="Address to listen on (default: server.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: server.port, 8787).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML config file (default: $THRIFTY_CONFIG); THRIFTY_* variables override it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (each with its own engine; they share the ledger).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request line.")
def serve(host: str | None, port: int | None, config_file: str | None, workers: int, log_level: str,
          access_log: bool) -> None:
    """Run the OpenAI- and Anthropic-compatible proxy (Ctrl-C stops it; the ledger is flushed first)."""
    from thrifty.middleware.server._run import run

    run(host=host, port=port, config_file=config_file, workers=workers, log_level=log_level, access_log=access_log)


_REPORT_GROUPS = ("day", "hour", "week", "model", "provider", "project", "user", "key", "tag", "status")


@main.command()
@click.option("--db", "db_url", metavar="URL", help="Ledger database URL (default: the configured ledger).")
@click.option(
    "--since", default="7d", show_default=True, help="Start: 30m, 24h, 7d, 2w, today, or a date/ISO time."
)
@click.option("--until", default=None, help="End (exclusive), same forms as --since; default: now.")
@click.option(
    "--group-by",
    type=click.Choice(_REPORT_GROUPS, case_sensitive=False),
    default="model",
    show_default=True,
    help="What each row totals.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"], case_sensitive=False),
    default="table",
    show_default=True,
)
@click.option("--model", default=None, help="Only calls answered by this model.")
@click.option("--provider", default=None, help="Only calls to this provider.")
@click.option("--project", default=None, help="Only calls of this project.")
@click.option("--user", default=None, help="Only calls made for this end user.")
@click.option("--tag", default=None, help="Only calls with this tag.")
def report(
    db_url: str | None,
    since: str,
    until: str | None,
    group_by: str,
    fmt: str,
    model: str | None,
    provider: str | None,
    project: str | None,
    user: str | None,
    tag: str | None,
) -> None:
    """Token spend and savings from the ledger, grouped and totalled."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import DBAPIError

    from thrifty.errors import ThriftyError
    from thrifty.ledger import queries
    from thrifty.ledger.db import create_engine, redacted

    now = datetime.now(UTC)
    try:
        since_at = queries.parse_time(since, now=now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None
    try:
        until_at = queries.parse_time(until, now=now) if until else now
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--until'") from None
    if until_at <= since_at:
        raise click.UsageError(
            f"--until ({until_at:%Y-%m-%d %H:%M} UTC) must be after --since ({since_at:%Y-%m-%d %H:%M} UTC)"
        )
    if db_url is None:
        from thrifty.settings import Settings

        try:
            db_url = Settings.load().ledger_url
        except ThriftyError as exc:
            raise click.ClickException(str(exc)) from None
    filters = queries.Filters(model=model, provider=provider, project=project, user=user, tag=tag)
    engine = None
    try:
        engine = create_engine(db_url, must_exist=True)
        queries.check_ledger(engine)
        result = queries.spend(
            engine, since=since_at, until=until_at, group_by=group_by.lower(), filters=filters
        )
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise click.ClickException(f"cannot read the ledger at {redacted(db_url)}: {reason}") from None
    finally:
        if engine is not None:
            engine.dispose()
    fmt = fmt.lower()
    if fmt == "json":
        import json

        click.echo(json.dumps(result.as_dict(), indent=2))
    elif fmt == "csv":
        click.echo(_report_csv(result), nl=False)
    else:
        click.echo(_report_table(result, redacted(db_url)))


_COLUMNS = (
    # header, SpendRow attribute
    ("calls", "calls"),
    ("input", "input_tokens"),
    ("cache read", "cache_read_tokens"),
    ("cache write", "cache_write_tokens"),
    ("output", "output_tokens"),
    ("cost USD", "cost_usd"),
    ("saved USD", "usd_saved"),
    ("unpriced", "unpriced_calls"),
)


def _report_csv(result: SpendReport) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = [n for n in result.total.as_dict() if n != "group"]
    writer.writerow([result.group_by or "group", *names])
    for row in [*result.rows, result.total]:
        data = row.as_dict()
        label = "(total)" if row is result.total else ("" if row.group is None else row.group)
        writer.writerow([label, *("" if data[n] is None else data[n] for n in names)])
    return out.getvalue()


def _report_table(result: SpendReport, where: str) -> str:
    from decimal import Decimal

    def cell(row: SpendRow, attr: str) -> str:
        value = getattr(row, attr)
        if attr == "cost_usd":
            if value is None:
                return "unpriced" if row.calls else "0"
            return f"{value:,.6f}"
        if attr == "usd_saved":
            return f"{value:,.6f}" if value else "0"
        if isinstance(value, Decimal):
            return f"{value:,.6f}"
        return f"{value:,}"

    since = f"{result.since:%Y-%m-%d %H:%M}" if result.since else "the beginning"
    until = f"{result.until:%Y-%m-%d %H:%M}" if result.until else "now"
    lines = [
        f"thrifty spend {since} .. {until} UTC by {result.group_by}  ({where})",
        "",
    ]
    if not result.total.calls:
        lines.append("no calls in this period")
        return "\n".join(lines)
    header = [result.group_by or "group", *(h for h, _ in _COLUMNS)]
    body = [
        ["(none)" if r.group is None else r.group, *(cell(r, a) for _, a in _COLUMNS)] for r in result.rows
    ]
    total = ["total", *(cell(result.total, a) for _, a in _COLUMNS)]
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines += [fmt(header), rule, *(fmt(b) for b in body), rule, fmt(total)]
    if result.group_by == "tag":
        lines.append("(a call with several tags counts in each of them; the total counts it once)")
    if result.total.unpriced_calls:
        lines.append(
            f"{result.total.unpriced_calls:,} call(s) could not be priced; their cost is not in the totals"
        )
    if result.total.estimated_calls:
        lines.append(f"{result.total.estimated_calls:,} call(s) have estimated usage")
    return "\n".join(lines)


@main.command()
@click.option("--db", "db_url", metavar="URL", help="Ledger database URL (default: the configured ledger).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8788, show_default=True, help="Port.")
@click.option("--admin-key", envvar="THRIFTY_SERVER__ADMIN_KEY", default=None,
              help="Require this key as a bearer token (default: $THRIFTY_SERVER__ADMIN_KEY; without one, "
                   "only loopback clients are answered).")
def dashboard(db_url: str | None, host: str, port: int, admin_key: str | None) -> None:
    """Serve the dashboard and its JSON API over a ledger, without a proxy."""
    from thrifty.errors import ThriftyError

    if db_url is None:
        from thrifty.settings import Settings

        try:
            db_url = Settings.load().ledger_url
        except ThriftyError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException("thrifty dashboard needs uvicorn: pip install 'thrifty[server]'") from None
    from thrifty.dashboard.app import create_app
    from thrifty.ledger.db import redacted

    try:
        app = create_app(db_url, admin_key=admin_key)
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"thrifty dashboard over {redacted(db_url)} at http://{host}:{port}/dashboard/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


from thrifty._cli_compress import compress as _compress  # noqa: E402 - registered once main exists
from thrifty._cli_contracts import contracts as _contracts  # noqa: E402 - registered once main exists
from thrifty._cli_keys import keys as _keys  # noqa: E402 - registered once main exists

main.add_command(_keys)
main.add_command(_contracts)
main.add_command(_compress)
