-- A landed batch's rows are on disk before its offsets are committed: without these, a
-- power loss after the commit could lose rows ClickHouse had acknowledged (its parts were
-- still in the page cache). Same reasoning as the lake's fsync of files and folders.
ALTER TABLE {database}.events MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE {database}.dead_letters MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
