"""Admin commands until the panel has screens for them: ``flask product show|set``, ``flask pool release-service``."""
from __future__ import annotations

import json
from pathlib import Path

import click
from flask.cli import AppGroup

from core.extensions import db
from core.models import Product
from core.products import ProductSettings, ProductSettingsError, validate

product_cli = AppGroup("product", help="A WHMCS product's module settings.")


@product_cli.command("show")
@click.argument("pid", type=int)
def show_command(pid: int) -> None:
    """Print the product's module settings (defaults for what is not set)."""
    product = db.session.get(Product, pid)
    stored = product.settings if product else {}
    click.echo(json.dumps(ProductSettings.from_stored(stored).to_dict(), indent=2))


@product_cli.command("set")
@click.argument("pid", type=int)
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--name", help="The product's name as WHMCS shows it.")
def set_command(pid: int, assignments: tuple[str, ...], name: str | None) -> None:
    """Change module settings, all or nothing: flask product set 3 template_vmid=9000 template_node=pve1"""
    values = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="assignments")
        values[key.strip()] = value
    try:
        clean = validate(values)
    except ProductSettingsError as exc:
        raise click.ClickException("; ".join(f"{k}: {v}" for k, v in exc.errors.items())) from None
    product = db.session.get(Product, pid) or Product(id=pid, name=name or f"Product {pid}", settings={})
    product.settings = {**(product.settings or {}), **clean}
    if name:
        product.name = name
    db.session.add(product)
    db.session.commit()
    click.echo(f"product {pid}: " + ", ".join(f"{k}={v}" for k, v in clean.items()))


# ------------------------------------------------------------------ addresses

pool_cli = AppGroup("pool", help="IP pool addresses.")


@pool_cli.command("release-service")
@click.argument("service_id", type=int)
def release_service_command(service_id: int) -> None:
    """Hand back the addresses a service holds with no VM record (kept when the record of a VM that failed
    to terminate was deleted): only once that VM is gone from Proxmox."""
    from core import ipam
    from core.models import VM
    if db.session.get(VM, service_id) is not None:
        raise click.ClickException(f"service {service_id} has a VM record: its addresses go with its terminate "
                                   "(or a reset to remove)")
    held = [a.address for a in ipam.assigned(service_id)]
    ipam.release(service_id)
    click.echo(f"service {service_id}: handed back {', '.join(held) or 'nothing'}")


# ------------------------------------------------------------------ admins and tokens

admin_cli = AppGroup("admin", help="Panel admins and API tokens.")


def _group(name: str | None):
    """The access group of that name (None: full access)."""
    from core.models import AccessGroup
    if not name:
        return None
    group = db.session.scalar(db.select(AccessGroup).where(AccessGroup.name == name))
    if group is None:
        raise click.ClickException(f"no access group named {name!r}")
    return group


@admin_cli.command("create")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--group", "group_name", help="Access group (default: full access).")
def admin_create_command(username: str, password: str, group_name: str | None) -> None:
    """Create a panel admin (the first one has full access)."""
    from core.admins import AdminError, create_admin
    try:
        create_admin(username, password, _group(group_name))
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"admin {username} created")


@admin_cli.command("group")
@click.argument("name")
@click.option("--sections", required=True, help="Comma-separated: dashboard,ip_pools,dns_zones,vms,products,settings")
@click.option("--can-change/--read-only", default=False)
def admin_group_command(name: str, sections: str, can_change: bool) -> None:
    """Create an access group."""
    from core.admins import AdminError, create_group
    try:
        create_group(name, [s.strip() for s in sections.split(",") if s.strip()], can_change)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"group {name} created")


token_cli = AppGroup("token", help="Bearer tokens for /api/v1.")
admin_cli.add_command(token_cli)


@token_cli.command("create")
@click.option("--name", required=True)
@click.option("--group", "group_name", help="Access group (default: full access).")
def token_create_command(name: str, group_name: str | None) -> None:
    """Create a token and print it (the only time it is shown)."""
    from core.admins import AdminError, create_token
    try:
        click.echo(create_token(name, _group(group_name)))
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None


@token_cli.command("revoke")
@click.option("--name", required=True)
def token_revoke_command(name: str) -> None:
    from core.admins import revoke_token
    if not revoke_token(name):
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"token {name} revoked")


@token_cli.command("list")
def token_list_command() -> None:
    from core.models import ApiToken
    for row in db.session.scalars(db.select(ApiToken).order_by(ApiToken.name)):
        state = "revoked" if row.revoked_at else "active"
        click.echo(f"{row.name:<24} {row.prefix}…  {state}")


# ------------------------------------------------------------------ translations

translate_cli = AppGroup("translate", help="Extract, update, compile and check the 25 catalogs.")
ROOT = Path(__file__).resolve().parent.parent
POT = ROOT / "translations" / "messages.pot"
# What marks a string for the catalogs besides _(): lazy texts, and the pipelines' step labels
# (Step("Allocate IP", ...)), which the VM log shows in the admin's language (the cron output keeps the
# original's English ones).
EXTRACT_KEYWORDS = ("_l", "lazy_gettext", "Step:1")


def _run(*args: str, quiet: bool = False) -> None:
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "babel.messages.frontend", *args], cwd=ROOT,
                          capture_output=quiet, text=True)
    if done.returncode:
        if quiet:
            click.echo(done.stdout + done.stderr, err=True)
        raise click.ClickException(f"pybabel {args[0]} failed")


@translate_cli.command("extract")
def extract_command() -> None:
    """Collect every _() string of the code and templates into translations/messages.pot."""
    keywords = [arg for keyword in EXTRACT_KEYWORDS for arg in ("-k", keyword)]
    _run("extract", "-F", "babel.cfg", *keywords, "--no-location", "--sort-output",
         "--omit-header", "-o", str(POT), ".")


@translate_cli.command("update")
def update_command() -> None:
    """Merge messages.pot into every catalog, creating the missing ones."""
    from core.i18n import LANGUAGES
    for code in LANGUAGES:
        po = ROOT / "translations" / code / "LC_MESSAGES" / "messages.po"
        if po.exists():
            _run("update", "-i", str(POT), "-d", "translations", "-l", code, "--no-fuzzy-matching",
                 "--ignore-obsolete")
        else:
            _run("init", "-i", str(POT), "-d", "translations", "-l", code)


@translate_cli.command("compile")
@click.option("--verbose", is_flag=True, help="Print each catalog and its statistics.")
def compile_command(verbose: bool) -> None:
    """Compile the catalogs to .mo files (done at install and in CI; .mo files are not committed)."""
    if verbose:
        _run("compile", "-d", "translations", "--statistics")
    else:
        _run("compile", "-d", "translations", quiet=True)
        click.echo("25 catalogs compiled")


@translate_cli.command("check")
def check_command() -> None:
    """Fail when a catalog misses a msgid, has an empty or fuzzy entry, or breaks a placeholder."""
    from core.i18n_check import check_catalogs
    problems = check_catalogs(ROOT / "translations")
    for line in problems:
        click.echo(line)
    if problems:
        raise click.ClickException(f"{len(problems)} problems in the catalogs")
    click.echo("all 25 catalogs complete")
