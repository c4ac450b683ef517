"""What a local Ray's worker processes run as they start, before Ray gives them an actor
(``PRELOADED`` in ``autoopt.dispatch.session``, Ray's ``preload_python_modules``): the worker's
modules imported, and torch's one-time costs of a first training step paid on a throw-away
model (the lazy import of ``torch._dynamo`` at the first optimizer step, the autograd engine's
start: more than a second on a small CPU). Ray starts these processes as soon as it is up, while
the driver still checks its input and opens its stores, so a worker placed for a study is warm
in a fraction of a second. Importing this module is the whole of its work.

Ray starts as many of these processes as there are cores. On a small machine their imports,
sharing the cores with Ray's own start, would make them all warm late together: there the
first warms up alone and the others follow (``first_alone``, at the gate ``start_ray`` made for
this Ray; on 2 cores the first worker, and so the study's first trial, is ready 5 s sooner).
"""

from __future__ import annotations

import gc

from autoopt.base.background import first_alone


def first_step() -> None:
    """One forward, backward and optimizer step of a tiny model on the CPU, thrown away."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model(torch.randn(4, 8))


with first_alone():
    import autoopt.dispatch.worker  # noqa: F401  (the actor's class and everything it imports)

    first_step()
gc.collect()
gc.freeze()  # what the imports made lives as long as the process: out of the collector's way
