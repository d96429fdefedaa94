import pytest

from chalicelib.context import get_context
from local.inprocess import InProcessCluster


@pytest.fixture
def cluster(tmp_path):
    with InProcessCluster.running(workdir=tmp_path) as running:
        yield running


@pytest.fixture
def dev(tmp_path):
    """A whole lighthpc in stage dev (tables lighthpc-dev-*, the dev stage's config.json)."""
    with InProcessCluster.running(stage="dev", workdir=tmp_path) as running:
        assert get_context().settings.stage == "dev"
        assert not get_context().settings.allow_inline_argv
        yield running
