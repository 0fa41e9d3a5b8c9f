-- The Kubernetes gateway role is a project admin's grant to a named node
-- (PUT …/nodes/{node}/kube-gateway), audited; 1 when granted. The column
-- kube_gateway (0007) keeps only what the node's agent says it can do
-- (--kube-apiserver): any agent may say that, so it never makes a gateway alone.
--
-- Nothing is carried over: a node whose agent said it was a gateway before this
-- migration is not granted by it. After the upgrade an operator grants the role
-- to the nodes that should serve (see the README's upgrade notes); until then
-- the edge's Kubernetes door answers that it has no gateway.
ALTER TABLE nodes ADD COLUMN kube_gateway_granted BIGINT NOT NULL DEFAULT 0;
