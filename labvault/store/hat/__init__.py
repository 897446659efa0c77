"""The Hat backend (``hat://host:port?namespace=...&model_prefix=a/b``): records as events on a Hat event
server (PyPI ``hat-event``), models also in aimm's event form.

``backend`` holds ``HatBackend`` and its design decisions; ``records`` the event kinds, their payloads and
the replica that replays them in the server's order; ``connection`` the event loop thread and the eventer
clients.
"""
