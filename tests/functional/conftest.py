import os

import pytest
from moto import mock_aws

from chalicelib.context import reset_process_state
from local.inprocess import InProcessCluster


@pytest.fixture
def cluster(tmp_path):
    saved = dict(os.environ)
    with mock_aws():
        yield InProcessCluster.start(workdir=tmp_path)
    os.environ.clear()
    os.environ.update(saved)
    reset_process_state()
