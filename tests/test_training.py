import pytest

from lakehouse.training import search_space


def test_search_space_rejects_unknown_parameters() -> None:
    with pytest.raises(ValueError, match=r"unknown search_space parameters \['maxDepht'\]"):
        search_space({"maxDepht": [3, 5]})


def test_search_space_takes_bounds_from_conf() -> None:
    from hyperopt.pyll.stochastic import sample
    import numpy as np

    space = search_space({"maxDepth": [2, 3], "maxIter": [10, 20]})
    draws = [sample(space, rng=np.random.default_rng(i)) for i in range(20)]
    assert {d["maxDepth"] for d in draws} <= {2.0, 3.0}
    assert {d["maxIter"] for d in draws} <= {10.0, 20.0}
