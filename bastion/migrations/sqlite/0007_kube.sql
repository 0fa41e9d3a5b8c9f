-- The Kubernetes groups a role grants on the project's clusters, as a JSON array;
-- NULL (every role before this) means the role's default, postern:<role>.
ALTER TABLE role_bindings ADD COLUMN kube_groups TEXT;
-- 1 when the node's agent forwards Kubernetes API requests for its edge (it said
-- so in its health answer when its channel last came up).
ALTER TABLE nodes ADD COLUMN kube_gateway INTEGER NOT NULL DEFAULT 0;
