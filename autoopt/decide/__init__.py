"""After the search: the race between the best configs (``race``), the verdict on their
paired seeds (``verdict``) and the confirmation that runs both (``confirm``). The typed
records of that evidence are ``autoopt.evidence``, below the screen and the budget that write
some of them too.
"""
