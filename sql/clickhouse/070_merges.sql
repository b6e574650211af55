-- Fewer, wider merges of landed parts. Each landing batch is a part; with ClickHouse's default
-- merge_selector_base (5) a row was rewritten by merges about twice while a backlog drained,
-- and merges took more of the engine's CPU than the inserts themselves. A base of 10 merges
-- about ten parts of a size at a time (less write amplification, a few more active parts:
-- still tens, far from parts_to_delay_insert). bench/README.md, landing, has the figures.
ALTER TABLE {database}.events MODIFY SETTING merge_selector_base = 10;
