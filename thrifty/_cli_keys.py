"""``thrifty keys``: create, list and revoke the proxy's virtual keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from thrifty.middleware._budgets import SpendStatus
    from thrifty.middleware.limits import KeyStore, VirtualKey
    from thrifty.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _db_options(fn: F) -> F:
    fn = click.option(
        "--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
        help="Config file (TOML); default: $THRIFTY_CONFIG.",
    )(fn)
    return click.option(
        "--db", "db_url", metavar="URL", help="Ledger database URL, where keys live (default: the configured ledger)."
    )(fn)


def _format_option(fn: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"], case_sensitive=False), default="table",
        show_default=True,
    )(fn)


@click.group()
def keys() -> None:
    """Virtual keys of the proxy: budgets, rate limits and model allow-lists.

    Keys are stored hashed in the ledger database; a key's secret is shown once, when it is made.
    Keys from the config file ([[keys]]) are added when `thrifty serve` starts.
    """


@keys.command()
@click.option("--name", required=True, help="A unique name, e.g. team-a.")
@click.option("--budget-usd", metavar="USD", default=None, help="Spend limit per budget period (default: none).")
@click.option(
    "--budget-period", type=click.Choice(["day", "week", "month", "total"]), default="month", show_default=True,
    help="Calendar period (UTC) the budget applies to.",
)
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute (default: no limit).")
@click.option(
    "--models", default="*", show_default=True, help="Allowed provider/model patterns, comma-separated: 'openai/*,local/*'."
)
@_db_options
@_format_option
def create(
    name: str, budget_usd: str | None, budget_period: str, rpm: int | None, models: str,
    db_url: str | None, config_file: str | None, fmt: str,
) -> None:
    """Make a key and print its secret (shown only this once)."""
    budget: Decimal | None = None
    if budget_usd is not None:
        try:
            budget = Decimal(budget_usd.strip().lstrip("$"))
        except InvalidOperation:
            raise click.BadParameter(f"{budget_usd!r} is not an amount of USD", param_hint="'--budget-usd'") from None
    with _store(db_url, config_file) as (store, _settings):
        key, secret = store.create(name, budget_usd=budget, budget_period=budget_period, rpm=rpm, models=models)
    if fmt.lower() == "json":
        click.echo(json.dumps({**_key_dict(key), "secret": secret}, indent=2))
        return
    click.echo(f"created key {key.name!r}: {_limits_text(key)}")
    click.echo("its secret, shown only this once (thrifty keeps only a hash of it):")
    click.echo("")
    click.echo(f"    {secret}")
    click.echo("")
    click.echo("callers send it as 'Authorization: Bearer <secret>' or 'x-api-key: <secret>'")


@keys.command(name="list")
@_db_options
@_format_option
def list_(db_url: str | None, config_file: str | None, fmt: str) -> None:
    """Every key with its limits, this period's spend, and whether it is revoked."""
    with _store(db_url, config_file) as (store, settings):
        found = store.list()
        spend, note = _spend(found, store, settings)
    if fmt.lower() == "json":
        rows = []
        for key in found:
            status = spend.get(key.id)
            rows.append({
                **_key_dict(key),
                "period_start": status.period_start.isoformat() if status else None,
                "spent_usd": str(status.spent_usd) if status else None,
                "reserved_usd": str(status.reserved_usd) if status else None,
                "calls": status.calls if status else None,
            })
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo("no keys yet; make one with: thrifty keys create --name NAME")
        return
    header = ["name", "prefix", "budget", "period", "spent", "reserved", "rpm", "models", "status"]
    body = []
    for key in found:
        status = spend.get(key.id)
        body.append([
            key.name,
            key.prefix or "(config hash)",
            "-" if key.budget_usd is None else f"${key.budget_usd:,.2f}",
            key.budget_period,
            "?" if status is None else f"${status.spent_usd:,.4f}",
            "?" if status is None else f"${status.reserved_usd:,.4f}",
            "-" if key.rpm is None else str(key.rpm),
            ",".join(key.models),
            ("active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d}")
            + (" (config)" if key.source == "config" else ""),
        ])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = {2, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    click.echo(line(header))
    click.echo("  ".join("-" * w for w in widths))
    for row in body:
        click.echo(line(row))
    if note:
        click.echo(note)


@keys.command()
@click.argument("name")
@_db_options
def revoke(name: str, db_url: str | None, config_file: str | None) -> None:
    """Revoke the key NAME: calls with it are refused within seconds, everywhere."""
    with _store(db_url, config_file) as (store, _settings):
        before = store.get(name)
        key = store.revoke(name)
    if before is not None and before.revoked_at is not None:
        click.echo(f"key {key.name!r} was already revoked on {before.revoked_at:%Y-%m-%d %H:%M} UTC")
        return
    click.echo(f"revoked key {key.name!r} ({key.prefix or 'from the config file'}); "
               "calls with it are refused within a few seconds")
    if key.source == "config":
        click.echo("it comes from the config file: remove it there too, or it stays revoked until its secret changes")


# ---------------------------------------------------------------- helpers


@contextmanager
def _store(db_url: str | None, config_file: str | None) -> Iterator[tuple[KeyStore, Settings]]:
    from sqlalchemy.exc import DBAPIError

    from thrifty.errors import ThriftyError
    from thrifty.ledger.db import redacted
    from thrifty.middleware.limits import KeyStore
    from thrifty.settings import Settings

    try:
        settings = Settings.load(config_file) if config_file else Settings.load()
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    url = db_url or settings.ledger_url
    store = None
    try:
        store = KeyStore.open(url)
        yield store, settings
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise click.ClickException(f"cannot use the key database at {redacted(url)}: {reason}") from None
    finally:
        if store is not None:
            store.close()


def _spend(
    found: list[VirtualKey], store: KeyStore, settings: Settings
) -> tuple[dict[int, SpendStatus], str | None]:
    from thrifty.errors import ThriftyError
    from thrifty.middleware._budgets import Budgets, RedisBudgets, SqlBudgets

    budgets: Budgets
    try:
        budgets = RedisBudgets(settings.redis_url, ledger=store.engine) if settings.redis_url else SqlBudgets(store.engine)
    except ThriftyError as exc:
        return {}, f"spend unknown: {exc}"
    out: dict[int, SpendStatus] = {}
    note = None
    try:
        for key in found:
            try:
                out[key.id] = budgets.status(key)
            except ThriftyError as exc:
                note = f"spend unknown: {exc}"
                break
    finally:
        budgets.close()
    return out, note


def _limits_text(key: VirtualKey) -> str:
    parts = ["no budget" if key.budget_usd is None else f"budget ${key.budget_usd:,.2f} per {key.budget_period}"
             if key.budget_period != "total" else f"budget ${key.budget_usd:,.2f} in total"]
    parts.append("no rate limit" if key.rpm is None else f"{key.rpm} requests per minute")
    parts.append(f"models {', '.join(key.models)}")
    return "; ".join(parts)


def _key_dict(key: VirtualKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "prefix": key.prefix,
        "key_id": key.key_id,
        "budget_usd": None if key.budget_usd is None else str(key.budget_usd),
        "budget_period": key.budget_period,
        "rpm": key.rpm,
        "models": list(key.models),
        "status": "active" if key.active else "revoked",
        "source": key.source,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }
