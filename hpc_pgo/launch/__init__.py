"""Launching: submitit executors (local, Slurm), checkpointable fold tasks, requeue, the report.

- ``plan``: the planned array (FoldPlan per fold; what --dry-run prints).
- ``env``: submitit's JobEnvironment -> RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, threads.
- ``task``: ``FoldTask``, the checkpointable submitit callable around cfg.launch.fold_fn.
- ``rundir``: the run directory (saved config, refusal of another config, finished folds, undo).
- ``locks``: one submission per run_dir and fold at a time (run_dir flock, fold claims).
- ``executors``: ``launch_array`` (local queue or ONE Slurm array + afterany report job).
- ``sweep``: configs/sweep/<name>.yaml -> one composed config per configuration.
- ``submission``: ``submit(args)``, ``wait(submission)`` (progress bar).
- ``report``: ``write_report(run_dir)``, ``report(run_dir)``: summary.json/md, km.png, modulation.png.
"""
