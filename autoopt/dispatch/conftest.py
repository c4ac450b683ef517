"""pytest's collection of the package's docstring examples (``--doctest-modules``, pyproject's
addopts), which imports every module to find them: a module whose import is its work stays out.
Not imported by autoopt itself.
"""

# Ray's workers import preload.py as they start: the import trains a throw-away model and
# freezes the garbage collector, which a test process must not do. It holds no examples.
collect_ignore = ["preload.py"]
