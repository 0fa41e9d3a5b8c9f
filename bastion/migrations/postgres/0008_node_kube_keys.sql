-- Keys a node's agent learned from its Kubernetes Node object (--kube-node-keys),
-- as it last reported them: JSON {keys, rejected}, and when that last changed.
-- Access that does not go through the bastion is still shown in one place.
ALTER TABLE nodes ADD COLUMN kube_keys TEXT;
ALTER TABLE nodes ADD COLUMN kube_keys_at BIGINT;
