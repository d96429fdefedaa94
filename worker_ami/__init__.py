"""The worker agent and the built-in apps, baked into the worker AMI."""
