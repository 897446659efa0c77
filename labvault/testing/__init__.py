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
"""

from labvault.testing.backend_suite import BackendTests
from labvault.testing.bad_input import BadInputTests

__all__ = ["BackendTests", "BadInputTests"]
