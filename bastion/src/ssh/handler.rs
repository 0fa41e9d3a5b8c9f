//! The russh handler of one SSH connection: public-key authentication against
//! registered keys, direct-tcpip jumps handed to the relay, and a refusal with a
//! reason (and an audit entry) for every other channel or forwarding request.
//!
//! russh calls `auth_publickey` only after it has verified the client's signature;
//! a key that is merely offered (`auth_publickey_offered`) changes no state here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::ChannelOpenHandle;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::keys::{canonical, fingerprint};
use super::relay::{self, Jump};
use super::terminate::bridge::{self, Opening};
use super::terminate::{AMBIGUOUS_KEY, Destination, Upstreams};
use crate::audit::Event;
use crate::authz::Principal;
use crate::clock::now_ms;
use crate::metrics::inc;

/// An authenticated SSH user: who, and with which key.
#[derive(Debug)]
pub struct SshUser {
    pub principal: Principal,
    pub fingerprint: String,
    /// `<algorithm> <base64>`, the form grants carry.
    pub public_key: String,
}

pub struct Conn {
    shared: Arc<super::Door>,
    peer: SocketAddr,
    authenticated: Arc<Notify>,
    cancel: CancellationToken,
    user: Option<Arc<SshUser>>,
    /// Keeps this connection in the live registry while it is authenticated.
    _live: Option<super::live::Registered>,
    /// The name a client tried to log in as, for the audit entry of a failed login.
    tried: Option<(String, Vec<String>)>,
    /// `LOGIN+NODE`: the bastion terminates this connection's sessions.
    dest: Option<Destination>,
    /// Its connections to nodes, shared by its channels.
    upstreams: Arc<Upstreams>,
    /// `LOGIN+NODE` with a key several users registered: every channel is
    /// refused with what to do instead.
    ambiguous: bool,
}

const JUMP_ONLY: &str = "a session on the bastion needs a node: ssh LOGIN+NODE@<bastion> (recorded), or ssh -J <you>@<bastion> LOGIN@NODE";

/// How a login name reads: a Postern user (a jump), or a node to terminate to.
enum Login {
    Jump,
    Terminate(Destination),
    Bad(String),
}

fn login(user: &str) -> Login {
    match super::terminate::destination(user) {
        None => Login::Jump,
        Some(Ok(d)) => Login::Terminate(d),
        Some(Err(why)) => Login::Bad(why),
    }
}

impl Conn {
    pub fn new(
        shared: Arc<super::Door>,
        peer: SocketAddr,
        authenticated: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Conn {
        Conn {
            shared,
            peer,
            authenticated,
            cancel,
            user: None,
            _live: None,
            tried: None,
            dest: None,
            upstreams: Arc::default(),
            ambiguous: false,
        }
    }

    fn publickey_only() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    /// The named user and their registered key with this fingerprint. Keys are
    /// looked up for the user named at login only: a key two users registered
    /// authenticates each as themselves, never one as the other. A disabled
    /// user has none, and neither has a person whose org refuses people's
    /// registered keys (they log in with their session's certificate).
    async fn lookup(
        &self,
        user: &str,
        key: &PublicKey,
    ) -> Option<(crate::store::SshKeyRow, crate::store::UserRow)> {
        // A name that cannot be a user costs no database round trip.
        postern_api::validate::name("user", user).ok()?;
        let fp = fingerprint(key);
        let found = async {
            let Some(owner) = self.live_user(user).await? else {
                return Ok(None);
            };
            self.usable(owner, &fp).await
        };
        match found.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "store unavailable during SSH authentication");
                None
            }
        }
    }

    /// The one user who registered this key, for a `LOGIN+NODE` login (which
    /// names no user): `Err(())` when several did (registering proves no
    /// possession, so a key names none of them by itself).
    async fn lookup_by_key(
        &self,
        key: &PublicKey,
    ) -> Result<Option<(crate::store::SshKeyRow, crate::store::UserRow)>, ()> {
        let fp = fingerprint(key);
        let found = async {
            let owners = self.shared.store.ssh_key_owners(&fp, 2).await?;
            let only = match owners.as_slice() {
                [] => return Ok(Ok(None)),
                [only] => only,
                _ => return Ok(Err(())),
            };
            let Some(owner) = self
                .shared
                .store
                .user_by_id(&only.user_id)
                .await?
                .filter(|u| u.disabled_at.is_none())
            else {
                return Ok(Ok(None));
            };
            self.usable(owner, &fp).await.map(Ok)
        };
        match found.await {
            Ok(r) => r,
            Err::<_, crate::store::StoreError>(e) => {
                tracing::error!(error = %e, "store unavailable during SSH authentication");
                Ok(None)
            }
        }
    }

    /// The owner's registered key with this fingerprint, if the owner may log
    /// in with registered keys from here.
    async fn usable(
        &self,
        owner: crate::store::UserRow,
        fp: &str,
    ) -> Result<Option<(crate::store::SshKeyRow, crate::store::UserRow)>, crate::store::StoreError>
    {
        // A bot's keys work from its networks only; SSO users have none
        // (their roles last only as long as their groups).
        if owner.is_bot()
            && let Some(cidrs) = self.shared.store.bot_source_cidrs(&owner.id).await?
            && !cidrs
                .iter()
                .any(|c| crate::access::authn::in_cidr(self.peer.ip(), c))
        {
            return Ok(None);
        }
        if !owner.is_bot() && self.shared.store.is_sso_user(&owner.id).await? {
            return Ok(None);
        }
        if !owner.is_bot()
            && self
                .shared
                .store
                .org_policy(&owner.org_id)
                .await?
                .refuse_person_keys
        {
            return Ok(None);
        }
        Ok(self
            .shared
            .store
            .user_ssh_key(&owner.id, fp)
            .await?
            .map(|row| (row, owner)))
    }

    async fn live_user(
        &self,
        user: &str,
    ) -> Result<Option<crate::store::UserRow>, crate::store::StoreError> {
        Ok(self
            .shared
            .store
            .user_by_name(user)
            .await?
            .filter(|u| u.disabled_at.is_none()))
    }

    /// The open login session of `user` that certified `key`: such a key is
    /// offered before its certificate, and is taken only with it.
    async fn session_key(&self, user: &str, key: &PublicKey) -> bool {
        if postern_api::validate::name("user", user).is_err() {
            return false;
        }
        let found = async {
            let Some(owner) = self.live_user(user).await? else {
                return Ok(false);
            };
            Ok::<_, crate::store::StoreError>(
                self.shared
                    .store
                    .session_by_ssh_key(&owner.id, &fingerprint(key), now_ms())
                    .await?
                    .is_some(),
            )
        };
        found.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "store unavailable during SSH authentication");
            false
        })
    }

    /// Whether an open session certified `key`, whoever's (a `LOGIN+NODE`
    /// login names no user; the certificate that follows does).
    async fn session_key_any(&self, key: &PublicKey) -> bool {
        self.shared
            .store
            .session_by_fingerprint(&fingerprint(key), now_ms())
            .await
            .map(|s| s.is_some())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "store unavailable during SSH authentication");
                false
            })
    }

    /// A certificate's user and session, once everything russh leaves to us
    /// is checked (see `pki::ssh_user_ca`); the refusal says why.
    async fn certified(
        &self,
        user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<(crate::store::UserRow, crate::store::SessionRow), String> {
        postern_api::validate::name("user", user).map_err(|_| "no such user".to_string())?;
        let now = now_ms();
        let c = self
            .shared
            .pki
            .user_ca()
            .check(cert, user, (now / 1000) as u64)?;
        let store_down = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "store unavailable during SSH authentication");
            "the bastion cannot check sessions now; retry".to_string()
        };
        let owner = self
            .live_user(user)
            .await
            .map_err(store_down)?
            .ok_or_else(|| "no such user, or disabled".to_string())?;
        let session = self
            .shared
            .store
            .session(&c.session_id)
            .await
            .map_err(store_down)?
            .ok_or_else(|| "the certificate's session is unknown: log in again".to_string())?;
        let key_fp = fingerprint(&PublicKey::new(cert.public_key().clone(), ""));
        if session.user_id != owner.id || session.ssh_fingerprint.as_deref() != Some(&key_fp) {
            return Err("the certificate does not match its session: log in again".into());
        }
        if let Some(reason) = &session.end_reason {
            return Err(format!(
                "the certificate's session ended ({reason}): log in again"
            ));
        }
        if session.ended_at.is_some() || session.expires_at <= now {
            return Err("the certificate's session is over: log in again".into());
        }
        Ok((owner, session))
    }

    fn note_attempt(&mut self, user: &str, key: &PublicKey) {
        let fp = fingerprint(key);
        // The name is the peer's: bounded and printable before it is kept, since it
        // ends up in the audit log and the logs (user names are at most 63 bytes).
        let entry = self
            .tried
            .get_or_insert_with(|| (postern_api::validate::peer_line(user, 80), Vec::new()));
        if entry.1.len() < 10 && !entry.1.contains(&fp) {
            entry.1.push(fp);
        }
    }

    /// Refuses a channel or request type the front door does not serve.
    fn refuse(&self, what: &str, reason: &str) {
        inc(&self.shared.metrics.ssh_denied);
        let mut ev = Event::new("ssh.refused", "denied")
            .source(Some(self.peer.ip().to_string()))
            .detail(json!({ "request": what, "reason": reason }));
        if let Some(u) = &self.user {
            ev = ev.org(&u.principal.org_id).actor(&u.principal.user_name);
        }
        self.shared.audit.best_effort(ev);
    }

    async fn reject(&self, reply: ChannelOpenHandle, what: &str, reason: &str) {
        self.refuse(what, reason);
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: reason.to_string(),
            })
            .await;
    }
}

impl Conn {
    /// What a terminated channel needs, when this connection is `LOGIN+NODE`.
    fn opening(&self, user: Arc<SshUser>, session: &Session) -> Option<Opening> {
        Some(Opening {
            shared: self.shared.clone(),
            user,
            dest: self.dest.clone()?,
            peer: self.peer,
            upstreams: self.upstreams.clone(),
            cancel: self.cancel.clone(),
            server: session.handle(),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.user.is_some() {
            return;
        }
        let Some((user, keys)) = self.tried.take() else {
            return;
        };
        inc(&self.shared.metrics.ssh_auth_failures);
        // Through the bounded queue, aggregated per source: a flood of failed
        // logins costs a few audit entries, not a task and a row each.
        self.shared.audit.failed_login(self.peer.ip(), &user, keys);
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Self::publickey_only())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Ownership is not proven yet: answer "go on and sign" or "no", nothing more.
        // The attempt is noted either way; it is audited if no key is ever proven.
        self.note_attempt(user, offer.public_key);
        let known = match login(user) {
            Login::Jump => {
                self.lookup(user, offer.public_key).await.is_some()
                    || self.session_key(user, offer.public_key).await
            }
            Login::Terminate(Destination { user: Some(u), .. }) => {
                self.lookup(&u, offer.public_key).await.is_some()
                    || self.session_key(&u, offer.public_key).await
            }
            Login::Terminate(_) => {
                !matches!(self.lookup_by_key(offer.public_key).await, Ok(None))
                    || self.session_key_any(offer.public_key).await
            }
            Login::Bad(_) => false,
        };
        if known {
            Ok(Auth::Accept)
        } else {
            Ok(Self::publickey_only())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let (found, dest) = match login(user) {
            Login::Jump => (self.lookup(user, key.public_key).await, None),
            Login::Terminate(d) => match &d.user {
                Some(u) => (self.lookup(u, key.public_key).await, Some(d)),
                None => match self.lookup_by_key(key.public_key).await {
                    Ok(found) => (found, Some(d)),
                    Err(()) => {
                        // The key is proven; whose it is, is not. The
                        // connection stays open only to say so on each channel.
                        self.ambiguous = true;
                        self.dest = Some(d);
                        return Ok(Auth::Accept);
                    }
                },
            },
            Login::Bad(_) => (None, None),
        };
        let Some((row, owner)) = found else {
            self.note_attempt(user, key.public_key);
            return Ok(Self::publickey_only());
        };
        self.dest = dest;
        let owner_id = owner.id.clone();
        let principal = match crate::access::authn::principal(&self.shared.store, owner).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the key owner's roles during SSH authentication");
                return Ok(Self::publickey_only());
            }
        };
        let Ok(public_key) = canonical(key.public_key) else {
            return Ok(Self::publickey_only());
        };
        self._live = Some(self.shared.live.connection(
            &owner_id,
            &row.fingerprint,
            self.cancel.clone(),
        ));
        self.user = Some(Arc::new(SshUser {
            principal,
            fingerprint: row.fingerprint,
            public_key,
        }));
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let key = PublicKey::new(certificate.public_key().clone(), "");
        // A `LOGIN+NODE` login names a node; the certificate names the user
        // (the bastion issues each for one).
        let (name, dest) = match login(user) {
            Login::Jump => (Ok(user.to_string()), None),
            Login::Terminate(d) => match certificate.valid_principals() {
                [one] if d.user.as_ref().is_none_or(|u| u == one) => (Ok(one.clone()), Some(d)),
                _ => (
                    Err("the certificate names no single Postern user".to_string()),
                    None,
                ),
            },
            Login::Bad(why) => (Err(why), None),
        };
        let checked = match name {
            Ok(name) => self.certified(&name, certificate).await,
            Err(why) => Err(why),
        };
        let (owner, session) = match checked {
            Ok(found) => found,
            Err(why) => {
                self.note_attempt(user, &key);
                self.shared.audit.best_effort(
                    Event::new("ssh.certificate", "denied")
                        .source(Some(self.peer.ip().to_string()))
                        .actor(postern_api::validate::peer_line(user, 80))
                        .detail(json!({ "reason": why, "key_id": postern_api::validate::peer_line(certificate.key_id(), 120) })),
                );
                return Ok(Self::publickey_only());
            }
        };
        let owner_id = owner.id.clone();
        let owner_org = owner.org_id.clone();
        let owner_name = owner.name.clone();
        let principal = match crate::access::authn::principal(&self.shared.store, owner).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the certificate owner's roles during SSH authentication");
                return Ok(Self::publickey_only());
            }
        };
        let Ok(public_key) = canonical(&key) else {
            return Ok(Self::publickey_only());
        };
        let fp = fingerprint(&key);
        self._live = Some(
            self.shared
                .live
                .connection(&owner_id, &fp, self.cancel.clone()),
        );
        // The connection ends with its session: a shell or a tunnel opened a
        // minute before the session expires does not outlive it.
        let cancel = self.cancel.clone();
        let left = Duration::from_millis((session.expires_at - now_ms()).max(0) as u64);
        self.shared.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(left) => cancel.cancel(),
            }
        });
        self.dest = dest;
        let user = owner_name.as_str();
        self.shared.audit.best_effort(
            Event::new("ssh.login", "ok")
                .org(&owner_org)
                .actor(user)
                .source(Some(self.peer.ip().to_string()))
                .detail(
                    json!({ "method": "certificate", "session_id": session.id, "fingerprint": fp }),
                ),
        );
        self.user = Some(Arc::new(SshUser {
            principal,
            fingerprint: fp,
            public_key,
        }));
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authenticated.notify_one();
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ambiguous {
            self.reject(reply, "direct-tcpip", AMBIGUOUS_KEY).await;
            return Ok(());
        }
        let Some(user) = self.user.clone() else {
            self.reject(reply, "direct-tcpip", "not authenticated")
                .await;
            return Ok(());
        };
        if let Some(o) = self.opening(user.clone(), session) {
            // `ssh -L` on a terminated connection: forwarded from the node.
            let host = postern_api::validate::peer_line(host_to_connect, 256);
            self.shared
                .tasks
                .spawn(bridge::forward(o, channel, reply, host, port_to_connect));
            return Ok(());
        }
        let jump = Jump {
            user,
            // The client's text: bounded and printable before it is logged,
            // audited or echoed back in a refusal.
            host: postern_api::validate::peer_line(host_to_connect, 256),
            port: port_to_connect,
            peer: self.peer,
        };
        // Authorization, the grant push and the agent call take round trips; the
        // connection's loop must keep serving other channels meanwhile.
        let shared = self.shared.clone();
        let cancel = self.cancel.clone();
        self.shared
            .tasks
            .spawn(relay::run(shared, jump, channel, reply, cancel));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ambiguous {
            self.reject(reply, "session", AMBIGUOUS_KEY).await;
            return Ok(());
        }
        let Some(o) = self.user.clone().and_then(|u| self.opening(u, session)) else {
            self.reject(reply, "session", JUMP_ONLY).await;
            return Ok(());
        };
        // Authorization and the node's login take round trips; the
        // connection's loop must keep serving other channels meanwhile.
        self.shared.tasks.spawn(bridge::session(o, channel, reply));
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reject(reply, "x11", "X11 forwarding is not offered by Postern")
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reject(
            reply,
            "forwarded-tcpip",
            "forwarded-tcpip channels are not accepted from clients",
        )
        .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reject(
            reply,
            "direct-streamlocal",
            "unix socket forwarding is not offered by Postern; forward through the node's sshd instead",
        )
        .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            &format!("tcpip-forward {address}:{port}"),
            "remote forwarding (-R) on the bastion is not offered; use -R on the node's sshd through the jump",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            &format!("streamlocal-forward {socket_path}"),
            "remote unix socket forwarding on the bastion is not offered",
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse(
            "auth-agent-req",
            "agent forwarding to the bastion is not offered",
        );
        Ok(false)
    }
}
