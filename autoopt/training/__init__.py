"""Inside a trial: the training loop (``train``) and the pruners that stop a trial early (``pruning``).
"""
