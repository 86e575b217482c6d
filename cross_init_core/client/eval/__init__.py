"""`python -m cross_init_core eval`: the paper's evaluation (command, plan and checks, graph per prompt, run, tables)."""
