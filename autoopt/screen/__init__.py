"""Before the search: the screen of every family at its published defaults (``portfolio``)
and the prior learned from the storage's earlier studies (``prior``).
"""
