"""Running units: the runner (key, skip, lock, provenance, task, log, status) and the executors
(local, a process pool, Ray). Above tasks and methods; below the CLI."""
