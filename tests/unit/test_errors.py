"""Every error leptonflow defines derives from the one base class, LeptonflowError."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import tasks
from tasks.errors import IntegrityError, KeyringError, LeptonflowError, ManifestError


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(tasks.__path__, prefix="tasks."))


def test_every_exception_defined_in_tasks_derives_from_leptonflow_error():
    found, wrong = [], []
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            found.append(f"{name}.{cls_name}")
            if not issubclass(cls, LeptonflowError):
                wrong.append(f"{name}.{cls_name}")
    assert not wrong, f"exception classes not derived from LeptonflowError: {wrong}"
    assert len(found) >= 18 and "tasks.errors.IntegrityError" in found  # the walk really saw them


def test_errors_keep_their_builtin_base_and_survive_pickling():
    """Existing ``except RuntimeError``/``LookupError`` keep working; errors cross process boundaries."""
    assert issubclass(ManifestError, RuntimeError) and issubclass(KeyringError, LookupError)
    err = IntegrityError("lake/x.parquet: sha256 mismatch", path="lake/x.parquet", problem="sha256")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == "lake/x.parquet" and back.problem == "sha256"
