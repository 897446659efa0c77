"""``BackendTests``: the behaviour every labvault backend must show, written once.

The memory backend is the reference model; every other backend runs exactly these tests. Capabilities
(``persistent``, ``multiprocess``) are read from the backend class, never guessed from its type. Heavy
cases (the 300 MB artifact) run only where ``heavy = True`` is set, once per backend family.

The tests live in themed mixins, composed here into one class:

=====================  ====================================================================
``suite_runs``         experiments, the run lifecycle, params, tags, results
``suite_verbs``        delete and restore, rename, resume a run
``suite_models``       models: ids, versions, names, aliases, serializers, safe loading
``suite_validation``   bad text and unstorable numbers refused on every path
``suite_metrics``      metric histories, latest values, exact steps, flushing, batch ids
``suite_artifacts``    artifact sources, replacement, deduplication, verification, streaming
``suite_search``       the filter language, ordering, paging, hostile filters
``suite_feed``         the change feed, in this process and across processes
``suite_processes``    reopening, racing writer processes, SIGKILL mid-logging
``bad_input``          the table of refused calls (``BadInputTests``)
=====================  ====================================================================

``suite_base`` holds the fixtures they share (``uri``, ``vault``). A backend's own hooks are checked
without a vault by ``BackendHookTests`` (``suite_hooks``), a separate mixin.
"""

from __future__ import annotations

from labvault.testing.bad_input import BadInputTests
from labvault.testing.suite_artifacts import ArtifactTests
from labvault.testing.suite_feed import FeedTests
from labvault.testing.suite_metrics import MetricTests
from labvault.testing.suite_models import ModelTests
from labvault.testing.suite_processes import ProcessTests
from labvault.testing.suite_runs import RunTests
from labvault.testing.suite_search import SearchTests
from labvault.testing.suite_validation import ValidationTests
from labvault.testing.suite_verbs import VerbTests

__all__ = ["BackendTests"]

# pytest collects a class's tests in reverse MRO order: the mixins are listed last-section-first so that
# the tests run in the order of the sections (the bad-input table first, as when it was the only base).
class BackendTests(ModelTests, ProcessTests, FeedTests, SearchTests, ArtifactTests, MetricTests,
                   ValidationTests, VerbTests, RunTests, BadInputTests):
    """Subclass and provide a ``uri`` fixture returning the URI of a fresh, empty store."""
