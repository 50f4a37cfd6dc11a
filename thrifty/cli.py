"""The ``thrifty`` command line."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="thrifty", prog_name="thrifty")
def main() -> None:
    """thrifty: cheaper, more reliable LLM calls, with every token accounted for."""
