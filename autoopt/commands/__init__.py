"""The commands: ``tune`` (``tuning``, started by ``launch``, shown by ``progress``),
``compare``, ``report`` and ``bench`` (``bench``, ``priorbench``, ``scalebench``).
"""
