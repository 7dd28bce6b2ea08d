"""What the producer, the worker and the committer share."""
