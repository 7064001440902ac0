"""Source runs: bookkeeping, planning and batches (`runs`), the reading thread of a
run (`pump`), each source's schedule (`schedule`), and the readers of each source
kind (`sources`)."""
