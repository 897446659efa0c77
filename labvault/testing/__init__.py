"""The labvault conformance suite, for built-in and third-party backends.

Subclass ``BackendTests`` in a test module and provide a ``uri`` fixture that returns a URI of a fresh,
empty store (zarr-python's ``StoreTests`` pattern)::

    from labvault.testing import BackendTests

    class TestMyBackend(BackendTests):
        @pytest.fixture
        def uri(self, tmp_path):
            return f"mine://{tmp_path}"

Every test of the suite then runs against that backend, including the bad-input table
(``labvault.testing.bad_input``: several hundred refused calls, one subtest each; needs pytest >= 9). The
pytest plugin (``labvault.testing.plugin``, registered under the ``pytest11`` entry point) adds the
``require_service`` helper.

``BackendHookTests`` (``labvault.testing.suite_hooks``) is a second, separate mixin: it calls the backend's
public ``Backend`` methods directly (no vault) and, given a ``raw`` fixture and readers of the medium,
checks that the writes reached it (zarr's ``StoreTests`` pattern). ``BackendTests`` is composed of the
themed mixins in ``labvault.testing.suite_*`` (see ``labvault.testing.backend_suite``).
"""

from labvault.testing.backend_suite import BackendTests
from labvault.testing.bad_input import BadInputTests
from labvault.testing.suite_hooks import BackendHookTests

__all__ = ["BackendHookTests", "BackendTests", "BadInputTests"]
