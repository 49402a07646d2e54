from __future__ import annotations

import importlib
import pkgutil

import batchrun


def test_all_is_sorted_and_exported() -> None:
    assert list(batchrun.__all__) == sorted(batchrun.__all__)
    for name in batchrun.__all__:
        assert hasattr(batchrun, name), name


def test_every_module_imports_and_sorts_its_all() -> None:
    for info in pkgutil.walk_packages(batchrun.__path__, "batchrun."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        if names is not None:
            assert list(names) == sorted(names), info.name
            for name in names:
                assert hasattr(module, name), f"{info.name}.{name}"


def test_error_tree_exit_codes() -> None:
    from batchrun import errors

    assert errors.JobError.exit_code == 2
    assert errors.RunLockedError.exit_code == 8 and not issubclass(
        errors.RunLockedError, errors.JobError
    )
    assert errors.APIConnectionError.exit_code == 5
    assert errors.EndpointTimeoutError.exit_code == 5
    assert issubclass(errors.EndpointTimeoutError, TimeoutError)
    assert errors.EndpointRestError.exit_code == 6
    assert errors.NotFoundError("x", status=404).exit_code == 2
    assert errors.APIClientError("slow down", status=429).exit_code == 1
    assert errors.BatchrunError.exit_code == 1
