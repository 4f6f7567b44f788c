"""Task kinds, one module each: a module here registers its `TaskKind` (leankd.core.taskkind) when the registry
is first read. A kind defined elsewhere (a test, a user's package) registers the same way, with
`leankd.tasks.register_task` or `leankd.core.taskkind.register_kind`.

A kind's own recipe sections (`data.audio`, `data.text`, `distill.seq`, ...) are models declared on its TaskKind;
the built-in kinds keep them in sibling modules (audio_config.py, text_config.py, seq_config.py) that import only
leankd.core, so the task code and the recipe can read a model without importing the kind's builders. Those register
nothing (discovery imports them like the rest)."""
