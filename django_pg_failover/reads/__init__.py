"""Re-running a read whose connection was lost (``retry_reads``)."""
