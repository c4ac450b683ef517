"""After the search: the race between the best configs (``race``), the verdict on their
paired seeds (``verdict``), the confirmation that runs both (``confirm``) and the typed
records of that evidence (``evidence``).
"""
