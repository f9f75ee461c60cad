"""ptm's worked examples. Importable from the repository's root (``import examples.…``):

- ``examples.images``: ``build_example_image(example, tag, *, docker_host)``, offline builds
- ``examples.central``: ``Federation`` and ``run_task`` (submit, wait, collect one task)
- ``examples.federated_mean``: ``run_federated_mean(federation, column=…, task_id=…)``
- ``examples.federated_logistic``: ``run_federated_logistic(federation, prefix=…, …)``
- ``examples.synthetic``: ``write_site_data(folder, sites, rows_per_site=…, seed=…)``
- ``examples.pooled``: the same statistics over all rows in one place (synthetic data only)

The folders with dashes (``federated-mean/``, ``iterative/``) are what a user copies: the
image recipe (``Dockerfile``, ``app/``) and small scripts that call the modules above.
"""
