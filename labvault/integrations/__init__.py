"""Bridges between labvault and other tools (each module imports its tool; ``import labvault`` loads none).

* ``labvault.integrations.aimm``: labvault as an aimm backend module (``{"module":
  "labvault.integrations.aimm", "uri": ...}`` in an ``aimm-server`` configuration).
"""
