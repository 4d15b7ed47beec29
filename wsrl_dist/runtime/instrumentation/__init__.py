"""Off the data path: merged stats, stage progress lines, device time per bundle, process costs
(runtime/__init__.py)."""
