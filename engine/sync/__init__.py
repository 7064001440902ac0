"""Source runs: bookkeeping and batches (`runs`), the reading thread, the
schedule, and the readers of each source kind (`sources`)."""
