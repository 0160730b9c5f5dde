"""The runner, one room per step of the flow; nothing imports a step that comes after it.

    spec, device, distributed, provenance, console   the sweep spec and what every step shares
    data/       catalog (the dataset registry, a file per data set), fetch, sources (splits), batches
    train.py    one training trial, DDP-ready
    evaluate/   plan, engine, rows, reference pipeline, examples, tasks
    results/    Parquet store, views (rich, markdown, CSV, JSON), plots
    execute/    sweep folder, inline executor, Ray trials and tasks, live view
    cli.py, bench/, api.py     the command line, the benchmarks (a file each), the notebook API
"""
