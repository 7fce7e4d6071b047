"""PPP and PRESTO follow scikit-learn's estimator conventions: every check of `check_estimator`."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from curation.ppp import PPP
from curation.presto import Presto


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.mark.filterwarnings("ignore:PRESTO. the fit is constant")  # tiny check data: expected
@pytest.mark.filterwarnings("ignore:The least populated class")
@parametrize_with_checks([PPP(), Presto()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
