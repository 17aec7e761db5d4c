"""Everything that enforces a decision: nftables sets, or a dry run that only logs."""
