"""``thrifty contracts``: check contract files and show a contract as the model will read it."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def contracts() -> None:
    """5C prompt contracts: TOML or YAML files, one contract each.

    A call names a contract in its thrifty options ({"contract": "NAME"}); thrifty puts the rendered
    contract first in its system prompt and enforces the contract's output rules.
    """


@contracts.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def check(paths: tuple[Path, ...]) -> None:
    """Validate contract files (or directories of them); print each problem as file:line: field: message."""
    from thrifty.contracts.loader import check_paths

    found, problems = check_paths(paths)
    for problem in problems:
        click.echo(str(problem))
    where = ", ".join(str(p) for p in paths)
    if problems:
        files = len({p.file for p in problems})
        noun = "problem" if len(problems) == 1 else "problems"
        click.echo(f"{len(problems)} {noun} in {files} file{'s' if files != 1 else ''}; "
                   f"{len(found)} contract{'s' if len(found) != 1 else ''} valid ({where})")
        raise SystemExit(1)
    if not found:
        click.echo(f"no contract files (*.toml, *.yaml, *.yml) in {where}")
        raise SystemExit(1)
    names = ", ".join(c.name for c in found)
    click.echo(f"{len(found)} contract{'s' if len(found) != 1 else ''} valid: {names}")


@contracts.command()
@click.argument("name")
@click.option("--dir", "dirs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Contract directory or file (repeatable); default: the configured [contracts] paths.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML config file (default: $THRIFTY_CONFIG).")
@click.option("--style", type=click.Choice(["thrifty", "5c", "xml", "plain"]), default="thrifty", show_default=True,
              help="thrifty: what calls get; 5c, xml, plain: the same contract written the longer ways.")
def render(name: str, dirs: tuple[Path, ...], config_file: str | None, style: str) -> None:
    """Print a contract's rendered prompt, then its token count (o200k_base) on stderr."""
    from thrifty.contracts.loader import ContractRegistry
    from thrifty.contracts.render import render as render_contract
    from thrifty.errors import ThriftyError
    from thrifty.ledger.tokens import count_text

    try:
        if dirs:
            paths = list(dirs)
        else:
            from thrifty.contracts.stage import contract_paths
            from thrifty.settings import Settings

            paths = contract_paths(Settings.load(config_file))
            if not paths:
                raise click.ClickException("no contract directory: pass --dir DIR or set [contracts] dir")
        contract = ContractRegistry.from_paths(paths).get(name)
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    text = render_contract(contract, style)
    click.echo(text)
    click.echo(f"-- {count_text(text, 'gpt-4o')} tokens (o200k_base), {len(text)} characters, style {style}", err=True)
