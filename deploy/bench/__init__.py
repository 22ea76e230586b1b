"""``tensorfleet bench``: every figure beside a baseline measured in the same run.

One module per section (``inprocess``, ``fleet``, ``fedavg``, ``plans``), each
exposing ``run(quick) -> list[Row]``; :mod:`deploy.bench.command` runs them and
prints one table. Shared helpers live in :mod:`deploy.bench.common`.
"""
