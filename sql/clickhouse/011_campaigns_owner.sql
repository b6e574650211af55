-- A campaign's owner: the customer id whose cost events spend its budget (issue 13).
-- Additive: rows loaded before this column existed read their advertiser as the owner (the
-- simulator's and the sample's advertiser is the customer), the same rule the CSV loader
-- applies to a file without an owner column.
ALTER TABLE {database}.campaigns ADD COLUMN IF NOT EXISTS owner String DEFAULT advertiser AFTER advertiser;
