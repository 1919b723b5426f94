"""Results: per-request records, the summary and ratios report, and the plot."""
