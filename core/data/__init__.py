"""Data files shipped with the suite (the tabular benchmark of `core.evaluation.tabular`)."""
