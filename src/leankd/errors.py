"""One exception family so the CLI can turn any user mistake into a clear message and exit code 2."""


class LeanKDError(Exception):
    """A problem the user can fix: the message names the thing and the fix. The CLI prints it without a traceback."""


class RecipeError(LeanKDError):
    """The recipe is malformed: the message names the field path, the bad value and what is allowed."""


class ModelError(LeanKDError):
    """A model cannot be built or loaded (unknown name, bad keyword, missing or mismatched weights)."""


class DataError(LeanKDError):
    """A data source is missing, empty or inconsistent."""
