"""The client API a user types: ``Vault`` > ``Experiment`` > ``Run`` over any backend (``labvault.open``).

``vault.py`` holds ``Vault``; ``run.py`` ``Experiment``, ``Run`` and ``RunList``; ``buffer.py`` the metric
buffer, the background flusher and the heartbeat; ``gc.py`` blob garbage collection.
"""

from labvault.client.run import Experiment, Run, RunList
from labvault.client.vault import Vault

__all__ = ["Experiment", "Run", "RunList", "Vault"]
