//! The agent's part of SSH access: key grants pushed by the bastion, the unix
//! socket that answers the keys helper, and the relay to the node's sshd.

mod grants;
mod keys_socket;
pub mod relay;

pub use grants::{GrantError, GrantStore};
pub use keys_socket::{BreakGlass, KeysService, LINK_REFRESH};
