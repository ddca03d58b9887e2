"""The command-line programs: the demos and their stages, export, the local viewer."""
