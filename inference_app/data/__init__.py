"""Data files shipped with the package (read with `importlib.resources`): the bundled load-test prompts."""
