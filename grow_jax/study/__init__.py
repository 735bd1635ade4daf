"""Studies: a declared grid of training runs (tasks x methods x hyperparameters x seeds), run resumably with
one small JSON per finished run, selected on validation by a rule fixed in advance, and reported on test.

    python -m grow_jax.study --study=experiments/studies/forgetting_270m.py --out=experiments/results/forgetting_270m

    runs.py    the study file, the grid, executing a run, selections, what is pending
    report.py  results.csv, results.md (mean ± sd, bootstrap intervals, paired differences), plots
    item_stats.py  paired bootstrap over items (and seeds), exact McNemar: the report's item-level comparisons
    frontier.py  new-task x retention frontiers with seed bands, retention at a matched new-task score
    stages.py  sequential tasks in the report: each stage's scores per method, forgetting paired per seed, a figure
    __main__.py the command line: run what is pending, --list, --report_only
"""
