"""The ``tensorfleet`` command line: run workers, the demo and the benchmarks.

Each sub-command lives in its own module and is imported only when it runs, so
``tensorfleet --help`` stays fast and a worker never imports the demo's plotting.
"""

from __future__ import annotations

import importlib

import click

#: sub-command name -> "module:attribute" of its click command
_COMMANDS = {
    "worker": "worker.cli:worker",
    "up": "worker.cli:up",
    "demo": "deploy.demo:demo",
    "bench": "deploy.bench.command:bench",
    "status": "worker.cli_ops:status",
    "dead-letters": "worker.cli_ops:dead_letters",
}


class _LazyGroup(click.Group):
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


@click.group(cls=_LazyGroup)
def main() -> None:
    """TensorFleet: PySyft-style remote tensors on RabbitMQ, Celery and Redis."""


if __name__ == "__main__":
    main()
