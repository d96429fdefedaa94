import pytest

from local.inprocess import InProcessCluster


@pytest.fixture
def cluster(tmp_path):
    with InProcessCluster.running(workdir=tmp_path) as running:
        yield running
