"""The producer: turns each due subscription into a claimed window and a job on RabbitMQ."""
