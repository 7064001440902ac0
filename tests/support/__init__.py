"""What the tests run besides the engine: `mariadb` (a private MariaDB server), `galera`
(a private 3-node Galera cluster), `chromium` (headless Chromium), `device` (another
program holding the write lock, a small tmpfs that fills up), `loopback` (an HTTP server
playing an upstream API), `hostile` (the checks every hostile-input test makes), and the
drivers that run an engine in a process of its own so a test can kill it mid-work
(`fts_driver`, `mirror_driver`, `sync_driver`)."""
