"""Task kinds, one module each: a module here registers its `TaskKind` (leankd.core.taskkind) when the registry
is first read. A kind defined elsewhere (a test, a user's package) registers the same way, with
`leankd.tasks.register_task` or `leankd.core.taskkind.register_kind`."""
