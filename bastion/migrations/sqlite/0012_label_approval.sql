-- An agent's labels become its node's only through an approval. A project
-- admin's approval names the labels it covers; an auto-approving token's
-- covers the first labels report of the node it let in, and this column says
-- that report is still to come (1) for that node. Every other report that
-- differs from the approved labels waits in agent_labels_pending, whatever the
-- node's state. Nodes enrolled before this column existed have had their
-- first report, or hold it for a project admin: 0.
ALTER TABLE nodes ADD COLUMN agent_labels_open BIGINT NOT NULL DEFAULT 0;
