"""Serving: the registered model behind KServe endpoints, its gallery index and its traffic log."""
