-- A landed batch's rows are on disk before its offsets are committed: without fsync, a
-- power loss after the commit could lose rows ClickHouse had acknowledged (its parts were
-- still in the page cache). Same reasoning as the lake's fsync of files and folders.
-- A batch's insert is written as a compact part (one file for all columns, up to 128 MiB)
-- rather than a wide one (two files per column): fsyncing 38 columns' files per insert cost
-- a fifth of the landing throughput, a compact part costs less to write than before, and
-- merges still make big parts wide (bench/README.md, landing).
ALTER TABLE {database}.events MODIFY SETTING
    fsync_after_insert = 1, fsync_part_directory = 1, min_bytes_for_wide_part = 134217728;
ALTER TABLE {database}.dead_letters MODIFY SETTING
    fsync_after_insert = 1, fsync_part_directory = 1, min_bytes_for_wide_part = 134217728;
