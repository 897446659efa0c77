"""The client API a user types: ``Vault`` > ``Experiment`` > ``Run`` over any backend (``labvault.open``)."""

from labvault.client.vault import Experiment, Run, RunList, Vault

__all__ = ["Experiment", "Run", "RunList", "Vault"]
