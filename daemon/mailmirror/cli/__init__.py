"""The command line (click): every subcommand, its output, and the demo. The only layer that prints."""
