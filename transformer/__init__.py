"""The ServiceX-compatible service around the join engine: worker, code generator, science entry, CLI."""
