"""The worker: stateless; delivers one window's batches per job and reports the outcome."""
