-- A node's result changes status twice (started, then finished), and with an
-- index on the status each change also moved an index entry: on a
-- 10,000-node fan-out the finishes, arriving in no particular order, rewrote
-- an index page at random for each node, on top of the row's own. Open
-- results are found through their executions instead (`executions_open`:
-- a result is open only while its execution is).
DROP INDEX IF EXISTS exec_results_open;
