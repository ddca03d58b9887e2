"""`styleme3d-batch`: many scenes times many styles times methods, each job a plain `ns-train` + `styleme3d-eval`.

One concept per module: `grid` (GRID.yaml read and checked), `methods` (how each method takes a style), `run_config`
(the data path of an existing nerfstudio run, read without nerfstudio), `jobs` (the job list, deterministic run
folders, what is finished), `worker` (one job in subprocesses, on a Ray worker), `runner` (Ray: embedded or a
cluster), `results` (results.csv / results.json), `contact_sheet` (scene rows x style columns PNG) and `cli` (the
command, progress). Files are written whole or not at all through `styleme3d_ns.core.atomic`. Ray is imported only by
`runner`, and only when jobs run. docs/batch.md shows how to use it.
"""
