"""The job around the data path: stages, seed groups, driver, supervision, checkpoints, stop, control
(runtime/__init__.py)."""
