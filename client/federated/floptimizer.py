"""``from client.federated.floptimizer import Optims``: PySyft 0.2's import path.

The class lives in :mod:`client.federated.optims`; this module only keeps the path
of ``syft.federated.floptimizer`` working.
"""

from client.federated.optims import Optims

__all__ = ["Optims"]
