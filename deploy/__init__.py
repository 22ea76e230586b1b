"""Tools around the TensorFleet API: the demo (the main job), benchmarks and fleet launching.

Nothing in ``client/``, ``worker/`` or ``broker/`` imports this package; the
``tensorfleet`` command line (:mod:`client.cli`) loads its sub-commands from
here only when they run.
"""
