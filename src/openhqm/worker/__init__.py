"""The worker pool: consume, dispatch to a handler or an HTTP endpoint, reply, settle."""
