"""Distillation methods, one file each. Every module here registers itself in `leankd.kd.registry` when the
registry is first read (the registry imports this package's modules), so a new method is one new file here plus
its test: no other source file names it."""
