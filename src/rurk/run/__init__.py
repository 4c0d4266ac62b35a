"""Running the grid: the experiment of `rurk run` (:mod:`.experiment`), its cell graph and status (:mod:`.grid`,
:mod:`.dryrun`), the plan (:mod:`.plan`), the executors (this process, :mod:`.pool_exec` worker processes,
:mod:`.ray_exec` Ray tasks) and tuning (:mod:`.tune`, :mod:`.study`, :mod:`.tuned`)."""
