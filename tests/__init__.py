"""The test suite as a regular package: lmms-eval's dependency latex2sympy2 installs a top-level `tests` package into
site-packages, which would shadow a namespace package of that name."""
