"""lighthpc's Lambda-side package (also installed on the worker AMI)."""
