"""What the tests run besides the engine: `mariadb` (a private MariaDB server),
`chromium` (headless Chromium), `device` (another program holding the write lock, a
small tmpfs that fills up), and the drivers that run an engine in a process
of its own so a test can kill it mid-work (`fts_driver`, `mirror_driver`,
`sync_driver`)."""
