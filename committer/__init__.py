"""The committer: applies outcomes to subscriptions, the only writer of DateTimeStart."""
