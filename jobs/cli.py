"""``flask cron``: the original's ``php cron.php``, option for option."""
from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from .cron import TASKS, TASKS_BY_NAME, run_tick, task_table
from .pipeline import Output, SystemClock

HELP = """PUQ Proxmox KVM - Standalone Cron

Usage:
flask cron                Run all tasks (with interval checks)
flask cron --task=processVirtualMachines  Run single task (skip interval check)
flask cron --force        Run all tasks (skip interval checks)
flask cron --list         Show tasks status
flask cron --no-lock      Run without lock (debug)
flask cron --inline       Run VM pipelines in this process even when REDIS_URL is set
flask cron --help         Show this help

Available tasks:
""" + "\n".join(f"{t.name} - {t.title} (default: {t.default_interval}m)" for t in TASKS)


class CronCommand(click.Command):
    """``--help`` prints the original's help screen as it is, not click's usage and options layout."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write(HELP + "\n")


def _echo(text: str) -> None:
    click.echo(text)
    sys.stdout.flush()


@click.command("cron", cls=CronCommand, help=HELP.splitlines()[0])
@click.option("--task", "task", metavar="NAME", help="Run one task, skipping its interval check.")
@click.option("--force", is_flag=True, help="Run all tasks, skipping interval checks.")
@click.option("--list", "show_list", is_flag=True, help="Show the tasks and their status.")
@click.option("--no-lock", is_flag=True, help="Run without the tick lock (debugging only).")
@click.option("--inline", is_flag=True, help="Run VM pipelines in this process even when REDIS_URL is set.")
@with_appcontext
def cron_command(task: str | None, force: bool, show_list: bool, no_lock: bool, inline: bool) -> None:
    if show_list:
        _echo(f"{'Task':<24} {'Interval':>8} {'Default':>8}  {'Last run':<19}  Status")
        for row in task_table():
            last = f"{row['last_run']:%Y-%m-%d %H:%M:%S}" if row["last_run"] else "never"
            state = row["last_status"] if row["active"] else "disabled"
            _echo(f"{row['name']:<24} {str(row['interval']) + 'm':>8} {str(row['default']) + 'm':>8}  "
                  f"{last:<19}  {state}")
        return
    if task is not None and task not in TASKS_BY_NAME:
        raise click.BadParameter(f"unknown task {task!r}; available: {', '.join(TASKS_BY_NAME)}",
                                 param_hint="--task")
    ctx = run_tick(Output(_echo, SystemClock()), only=task, force=force, use_lock=not no_lock,
                   inline=True if inline else None, manual=bool(task or force))
    if any(r.result == "error" for r in ctx.results):
        sys.exit(0)  # errors are reported in the output, as the original does; the cron itself succeeded
