"""The pure core: schemas, validation, the task registry and its state table. No trio, no I/O."""
