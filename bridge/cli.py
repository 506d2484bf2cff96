"""``flask bridge secret`` and ``flask bridge call``: drive the bridge exactly as the PHP shim does."""
from __future__ import annotations

import json
import sys

import click
import requests
from flask import current_app
from flask.cli import AppGroup

from .signing import signed_headers

bridge_cli = AppGroup("bridge", help="The signed bridge WHMCS calls.")


@bridge_cli.command("secret")
def secret_command() -> None:
    """Print the shared secret to paste into the WHMCS module settings."""
    click.echo(current_app.config["BRIDGE_SECRET"])


@bridge_cli.command("call")
@click.argument("function")
@click.option("--params", "params_file", type=click.File("rb"), required=True,
              help="JSON file with the WHMCS $params (use - for standard input).")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="Where the product listens.")
def call_command(function: str, params_file, url: str) -> None:
    """Sign and send one module call, then print the answer."""
    body = params_file.read()
    try:
        json.loads(body)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
    path = f"/bridge/v1/module/{function}"
    headers = signed_headers(current_app.config["BRIDGE_SECRET"], "POST", path, body)
    try:
        answer = requests.post(url.rstrip("/") + path, data=body, headers=headers, timeout=60)
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    click.echo(f"HTTP {answer.status_code}")
    click.echo(answer.text.strip())
    if answer.status_code >= 400:
        sys.exit(1)
