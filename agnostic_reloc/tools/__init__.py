"""What the CLI subcommands run: bag replay, the demo, world evaluation and the benchmark."""
