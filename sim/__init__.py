"""checkout-chaos: how a checkout loses track of money under load.

Packages: ``sim.domain`` (pure state machines and policies), ``sim.scenario`` (validated scenario
files), ``sim.check`` (the history oracle), ``sim.model`` (the SimPy simulation), ``sim.runner``
(replications and sweeps) and ``sim.cli`` (the ``checkout-chaos`` command).
"""

__version__ = "0.1.0"
