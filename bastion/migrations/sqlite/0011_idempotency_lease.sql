-- An Idempotency-Key claim is held by the request that made it, under a lease
-- it renews while it submits (on the database's clock, ms). Another request
-- takes the key over only once that lease has run out and no execution exists;
-- the first request binds the claim to its execution (lease_until NULL) in
-- the transaction that inserts the execution, and gives up if the claim is no
-- longer its own. Claims from before: bound when their execution exists, else
-- held for 30 s from their creation, as before.
ALTER TABLE idempotency_keys ADD COLUMN lease_until BIGINT;
UPDATE idempotency_keys SET lease_until = created_at + 30000
 WHERE NOT EXISTS (SELECT 1 FROM executions WHERE executions.id = idempotency_keys.exec_id);
