"""`python -m cross_init_core train`: the batch runner (command, jobs, the training graph, the farm of servers)."""
