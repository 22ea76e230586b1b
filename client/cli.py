"""The ``tensorfleet`` command line: run workers, the demo and the benchmarks.

Each sub-command lives in its own module and is imported only when it runs, so
``tensorfleet --help`` stays fast and a worker never imports the demo's plotting.

Every failure ends as one line on stderr, in click's form: ``Error: <what is
wrong and what to do>``, exit status 2 for a usage error (a bad option or
argument), 1 for anything that goes wrong while running (a TensorFleet error, an
OS error, or an unexpected exception, which names its type). ``tensorfleet
--debug <command>`` lets exceptions through instead, with their tracebacks.
"""

from __future__ import annotations

import importlib
from typing import IO, Any

import click

from broker.errors import TensorFleetError

#: sub-command name -> "module:attribute" of its click command
_COMMANDS = {
    "worker": "worker.cli:worker",
    "up": "worker.cli:up",
    "demo": "deploy.demo:demo",
    "bench": "deploy.bench.command:bench",
    "loadtest": "deploy.loadtest:loadtest",
    "status": "worker.cli_ops:status",
    "dead-letters": "worker.cli_ops:dead_letters",
    "provision": "deploy.provision:provision_command",
}


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(text.split())


class OneLineUsageError(click.UsageError):
    """A usage error shown as one ``Error: ...`` line that points at the command's --help.

    click prints a usage error after the command's usage and a "Try ... --help" line;
    here the hint closes the error line instead, so every error is one line.
    """

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message(), error.ctx)

    def format_message(self) -> str:
        message = one_line(self.message)
        if not message.endswith((".", "?", "!", ")")):
            message += "."
        if self.ctx is None:
            return message
        return f"{message} See '{self.ctx.command_path} --help'."

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


class CommandFailed(click.ClickException):
    """An error raised while a command ran, as one line (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def describe(error: Exception) -> str:
    """What to print for an exception that ended a command: what went wrong, what to do."""
    if isinstance(error, TensorFleetError):
        return str(error)  # TensorFleet's messages already name the object and the fix
    debug_hint = "run 'tensorfleet --debug ...' with the same arguments for the traceback"
    if isinstance(error, OSError):
        return f"{error} ({debug_hint})"
    return f"unexpected {type(error).__name__}: {error} (a bug: {debug_hint} and report it)"


class _Cli(click.Group):
    """Sub-commands loaded on demand; errors of every sub-command as one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise OneLineUsageError(error) from error

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneLineUsageError:
            raise
        except click.UsageError as error:
            raise OneLineUsageError(error) from error
        except (click.ClickException, click.exceptions.Exit, click.Abort, EOFError):
            raise  # click shows these itself (EOFError and Ctrl-C: "Aborted!")
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            raise CommandFailed(describe(error)) from error


@click.group(cls=_Cli)
@click.option(
    "--debug",
    is_flag=True,
    help="Let errors through with their tracebacks instead of one 'Error:' line.",
)
def main(debug: bool) -> None:
    """TensorFleet: PySyft-style remote tensors on RabbitMQ, Celery and Redis."""


if __name__ == "__main__":
    main()
