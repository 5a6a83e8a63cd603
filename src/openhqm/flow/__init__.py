"""Flow control: limits on rate and concurrency shared by every worker of one result store (docs/flow-control.md)."""
