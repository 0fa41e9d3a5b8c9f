//! Users' public keys as they arrive over the REST API. The parser lives in
//! `postern_api::pubkey`, shared with the agent (keys from Kubernetes Node objects
//! are held to the same rules); russh's `PublicKey` is `ssh_key::PublicKey`.

pub use postern_api::pubkey::{KeyError, UserKey, canonical, fingerprint, parse_user_key};
