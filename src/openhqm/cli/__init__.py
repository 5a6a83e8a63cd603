"""The `openhqm` command: run the bridge (serve, listener, worker), talk to a running listener
(submit, status, wait, ...), and check the configuration. `main` is the console entry point."""

from __future__ import annotations

import sys
from importlib.metadata import version as installed_version
from typing import Annotated

import typer

from openhqm.cli import client_commands, config_commands, queue_commands, schedule_commands, server
from openhqm.errors import MissingDependency

cli = typer.Typer(help="OpenHQM: a durable bridge between HTTP and message queues.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
dlq_cli = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
config_cli = typer.Typer(help="Check the configuration.", no_args_is_help=True)
callback_cli = typer.Typer(help="Result callbacks of finished requests.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(config_cli, name="config")
cli.add_typer(callback_cli, name="callback")
schedules_cli = typer.Typer(help="List, fire, pause and resume schedules.", no_args_is_help=True)
cli.add_typer(schedules_cli, name="schedules")
queues_cli = typer.Typer(help="List, pause and resume queues.", no_args_is_help=True)
cli.add_typer(queues_cli, name="queues")

for command in (server.serve, server.listener, server.worker, client_commands.submit, client_commands.status,
                client_commands.result, client_commands.wait, client_commands.cancel, client_commands.stats,
                server.cleanup, server.backends):
    cli.command()(command)
dlq_cli.command("list")(client_commands.dlq_list)
dlq_cli.command("replay")(client_commands.dlq_replay)
dlq_cli.command("purge")(client_commands.dlq_purge)
config_cli.command("check")(config_commands.config_check)
callback_cli.command("resend")(client_commands.callback_resend)
for verb in ("list", "run", "pause", "resume"):
    schedules_cli.command(verb)(getattr(schedule_commands, f"schedules_{verb}"))
for verb in ("list", "pause", "resume"):
    queues_cli.command(verb)(getattr(queue_commands, f"queues_{verb}"))


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"openhqm {installed_version('openhqm')}")
        raise typer.Exit()


@cli.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    pass


def main() -> None:
    try:
        cli()
    except MissingDependency as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
