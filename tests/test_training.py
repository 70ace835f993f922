import pytest

from lakehouse.training import search_space


def test_search_space_rejects_unknown_parameters() -> None:
    with pytest.raises(ValueError, match=r"unknown search_space parameters \['maxDepht'\]"):
        search_space({"maxDepht": [3, 5]})


def test_search_space_takes_bounds_from_conf() -> None:
    import numpy as np
    from hyperopt.pyll.stochastic import sample

    space = search_space({"maxDepth": [2, 3], "maxIter": [10, 20]})
    draws = [sample(space, rng=np.random.default_rng(i)) for i in range(20)]
    assert {d["maxDepth"] for d in draws} <= {2.0, 3.0}
    assert {d["maxIter"] for d in draws} <= {10.0, 20.0}


def test_equal_bounds_pin_a_parameter() -> None:
    import numpy as np
    from hyperopt import Trials, fmin, space_eval, tpe

    space = search_space({"subsamplingRate": [1.0, 1.0], "maxDepth": [2, 3]})
    assert space["subsamplingRate"] == 1.0
    seen: list[dict] = []
    best = fmin(lambda p: seen.append(p) or 0.0, space, algo=tpe.suggest, max_evals=3,
                trials=Trials(), rstate=np.random.default_rng(0), show_progressbar=False)
    assert {p["subsamplingRate"] for p in seen} == {1.0}
    assert space_eval(space, best)["subsamplingRate"] == 1.0  # what tune_and_fit refits with
