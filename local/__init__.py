"""The embedded AWS runtime and the CLI. Never shipped to Lambda."""
