//! What `postern ssh-config` leaves to the user's own SSH setup.
//!
//! A node's name is whatever its joiner chose, so a plain `Host NAME` for a
//! node could capture `ssh NAME` from the user: the host their own ssh
//! configuration describes, or the one their resolver finds. A plain name is
//! written only when neither gives it a meaning ([`UsedNames`], [`resolved`]);
//! every node stays reachable as `NODE.EDGE.PROJECT` either way.
//!
//! And `--install` puts its `Include` at the end of `~/.ssh/config`, after a
//! `Match all` ([`with_include_last`]). OpenSSH takes the first value it reads
//! for each setting, so whatever the user's own blocks set comes first; and an
//! `Include` inside a `Host` or `Match` block is read only for the hosts that
//! block matches, so without `Match all` Postern's file would be read for no
//! host at all (after a `Host other`) or only under the user's last block.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Includes are followed this deep at most, as OpenSSH does.
const MAX_DEPTH: usize = 16;
/// Files read at most, and bytes read of each: a glob over a large directory
/// or a huge file must not stall the command.
const MAX_FILES: usize = 256;
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Lookups at once.
const LOOKUP_THREADS: usize = 16;

/// The line written above Postern's `Include`, so a later install finds (and
/// moves) what an earlier one wrote.
pub const MARK: &str = "# postern ssh-config --install: Postern's nodes, read after all of the above, so that your own settings come first";

/// The host names and patterns an ssh configuration gives a meaning to:
/// every `Host` pattern, every `Match host` and `Match originalhost` pattern,
/// and every literal `HostName`, lowercased as ssh compares them.
#[derive(Debug, Default)]
pub struct UsedNames {
    patterns: BTreeSet<String>,
    /// `CanonicalizeHostname yes|always` somewhere: ssh then turns a plain
    /// `NAME` into `NAME.DOMAIN` by its `CanonicalDomains`, so any plain name
    /// may be one of the user's hosts, whatever `NAME` alone resolves to.
    canonicalizes: bool,
}

/// Whose file a path in an `Include` is relative to.
#[derive(Debug, Clone, Copy)]
enum Scope {
    User,
    System,
}

impl UsedNames {
    /// Reads the user's `~/.ssh/config` and the system's
    /// `/etc/ssh/ssh_config`, following their `Include`s, but not `ours`:
    /// Postern's own file, whose names are not the user's. A file that cannot
    /// be read is skipped, as ssh skips it.
    pub fn load(home: &Path, ours: &Path) -> UsedNames {
        let mut walk = Walk {
            home,
            ours: std::fs::canonicalize(ours).ok(),
            files: 0,
            used: UsedNames::default(),
        };
        walk.file(&home.join(".ssh").join("config"), Scope::User, 0);
        walk.file(Path::new("/etc/ssh/ssh_config"), Scope::System, 0);
        walk.used
    }

    /// The names and patterns of `text`, a configuration file (without
    /// following its `Include`s).
    #[cfg(test)]
    fn of(text: &str) -> UsedNames {
        let mut used = UsedNames::default();
        for line in text.lines() {
            if let Some((key, args)) = directive(line) {
                used.add(&key, &args);
            }
        }
        used
    }

    /// Whether `name` is given a meaning: some pattern matches it, other than
    /// one that matches every name (`Host *`, which is not about any host).
    pub fn uses(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| !matches_every_name(p) && glob(p.as_bytes(), name.as_bytes()))
    }

    /// Whether the configuration has ssh canonicalize host names: then no
    /// plain name may be written at all.
    pub fn canonicalizes(&self) -> bool {
        self.canonicalizes
    }

    fn add(&mut self, key: &str, args: &[String]) {
        let pattern = |p: &str| p.trim_start_matches('!').to_ascii_lowercase();
        match key {
            "canonicalizehostname"
                if args.first().is_some_and(|v| {
                    matches!(v.to_ascii_lowercase().as_str(), "yes" | "always")
                }) =>
            {
                self.canonicalizes = true;
            }
            "host" => self.patterns.extend(args.iter().map(|a| pattern(a))),
            // A HostName with %-tokens is made from the name typed: not a name.
            "hostname" => {
                if let Some(h) = args.first().filter(|h| !h.contains('%')) {
                    self.patterns.insert(h.to_ascii_lowercase());
                }
            }
            "match" => {
                let mut args = args.iter();
                while let Some(arg) = args.next() {
                    let (criterion, value) = match arg.split_once('=') {
                        Some((c, v)) => (c, Some(v)),
                        None => (arg.as_str(), None),
                    };
                    let criterion = criterion.trim_start_matches('!').to_ascii_lowercase();
                    // These take no argument; every other criterion takes one.
                    if matches!(criterion.as_str(), "all" | "canonical" | "final") {
                        continue;
                    }
                    let value = value.or_else(|| args.next().map(String::as_str));
                    if matches!(criterion.as_str(), "host" | "originalhost")
                        && let Some(v) = value
                    {
                        self.patterns.extend(v.split(',').map(pattern));
                    }
                }
            }
            _ => {}
        }
    }
}

struct Walk<'a> {
    home: &'a Path,
    ours: Option<PathBuf>,
    files: usize,
    used: UsedNames,
}

impl Walk<'_> {
    fn file(&mut self, path: &Path, scope: Scope, depth: usize) {
        if depth > MAX_DEPTH || self.files >= MAX_FILES {
            return;
        }
        if self.ours.is_some() && std::fs::canonicalize(path).ok() == self.ours {
            return;
        }
        let Some(text) = read_bounded(path) else {
            return;
        };
        self.files += 1;
        for line in text.lines() {
            let Some((key, args)) = directive(line) else {
                continue;
            };
            if key == "include" {
                for arg in &args {
                    for included in include_paths(self.home, scope, arg) {
                        self.file(&included, scope, depth + 1);
                    }
                }
            } else {
                self.used.add(&key, &args);
            }
        }
    }
}

fn read_bounded(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// One line's keyword (lowercased) and arguments, as OpenSSH splits them:
/// `Keyword arg …` or `Keyword=arg …`, arguments apart by white space, double
/// quotes keeping one argument whole, `#` at the start of one beginning a
/// comment.
fn directive(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let (key, rest) = line.split_at(end);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    Some((key.to_ascii_lowercase(), words(rest)))
}

fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut started) = (false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '#' if !quoted && !started => break,
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// The files an `Include` argument names: `~/` is the home directory, a
/// relative path is under `~/.ssh` (or `/etc/ssh` for the system's file),
/// and `*` and `?` are expanded in any part, in lexical order, never
/// matching a leading dot, as glob(3) does for ssh.
fn include_paths(home: &Path, scope: Scope, arg: &str) -> Vec<PathBuf> {
    let path = match arg.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if Path::new(arg).is_absolute() => PathBuf::from(arg),
        None => match scope {
            Scope::User => home.join(".ssh").join(arg),
            Scope::System => Path::new("/etc/ssh").join(arg),
        },
    };
    let mut found = vec![PathBuf::new()];
    for part in path.components() {
        let text = part.as_os_str().to_string_lossy();
        if !text.contains(['*', '?']) {
            for f in &mut found {
                f.push(part);
            }
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') && glob(text.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
            if next.len() > MAX_FILES {
                break;
            }
        }
        found = next;
    }
    found
}

/// A pattern of only `*` and `?` with a `*` in it: it matches (nearly) every
/// name, so it says nothing about any one.
fn matches_every_name(p: &str) -> bool {
    p.contains('*') && p.bytes().all(|b| b == b'*' || b == b'?')
}

/// ssh's patterns: `*` any run of characters, `?` any one.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                retry = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match retry {
                // The last `*` takes one more character, and matching resumes.
                Some((star, from)) => {
                    retry = Some((star, from + 1));
                    p = star + 1;
                    n = from + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Of `names`, those the system's resolver gives an address, or cannot say
/// about within `budget`. Each is looked up as ssh would look it up
/// (getaddrinfo: /etc/hosts, DNS with its search domains, and whatever else
/// the system consults), several at once. Only "no such name" frees a name:
/// a resolver that times out or is down may resolve it tomorrow, when
/// Postern's block would already be installed.
///
/// Lookups run on threads of their own that are left behind at the deadline,
/// so a stuck resolver delays nothing past `budget`, the command's exit
/// included.
pub fn resolved(names: &[String], budget: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + budget;
    let mut unanswered: BTreeSet<String> = names.iter().cloned().collect();
    let queue = Arc::new(Mutex::new(names.iter().cloned().collect::<VecDeque<_>>()));
    let (tx, rx) = mpsc::channel::<(String, bool)>();
    for _ in 0..names.len().min(LOOKUP_THREADS) {
        let (queue, tx) = (queue.clone(), tx.clone());
        std::thread::spawn(move || {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(name) = next else { return };
                let used = resolves(&name);
                if tx.send((name, used)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut used = BTreeSet::new();
    while !unanswered.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((name, known)) => {
                unanswered.remove(&name);
                if known {
                    used.insert(name);
                }
            }
            Err(_) => break,
        }
    }
    used.extend(unanswered);
    used
}

/// Whether the resolver gives `name` an address, or fails to answer.
fn resolves(name: &str) -> bool {
    use std::net::ToSocketAddrs;
    match (name, 22).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().is_some(),
        Err(e) => !no_such_name(&e),
    }
}

/// Whether a lookup failed because the name does not exist (or has no
/// address), rather than because nobody answered. The standard library
/// reports every getaddrinfo failure alike, its code only in the message:
/// `gai_strerror`'s text, untranslated since Rust programs never call
/// setlocale. These are glibc's, musl's and the BSDs' texts for it.
fn no_such_name(e: &std::io::Error) -> bool {
    let m = e.to_string();
    [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
        "nodename nor servname provided",
        "no address associated with name",
    ]
    .iter()
    .any(|t| m.contains(t))
}

/// `current` (the user's `~/.ssh/config`) with Postern's `include` line at
/// its end, after [`MARK`] and `Match all`, and nowhere else: what an
/// earlier install wrote is taken out first, wherever it is (the first
/// versions put the `Include` on the first line). Unchanged when it is
/// already so.
pub fn with_include_last(current: &str, include: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut lines = current.lines().peekable();
    let mut first = true;
    let mut old_top = false;
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == MARK {
            if lines.peek().map(|l| l.trim()) == Some("Match all") {
                lines.next();
            }
        } else if t == include {
            old_top |= first;
        } else {
            kept.push(line);
        }
        first = false;
    }
    // The first versions wrote a blank line after their Include.
    if old_top {
        while kept.first().is_some_and(|l| l.trim().is_empty()) {
            kept.remove(0);
        }
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(&format!("{MARK}\nMatch all\n{include}\n"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns_match_as_ssh_matches_them() {
        for (p, n) in [
            ("buildbox", "buildbox"),
            ("build*", "buildbox"),
            ("b?ildbox", "buildbox"),
            ("*box", "buildbox"),
            ("*", ""),
            ("a*b*c", "axxbyyc"),
        ] {
            assert!(glob(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
        for (p, n) in [
            ("build", "buildbox"),
            ("*.corp", "buildbox"),
            ("a*b*c", "axxbyy"),
        ] {
            assert!(!glob(p.as_bytes(), n.as_bytes()), "{p} {n}");
        }
    }

    #[test]
    fn a_users_hosts_and_names_are_used_but_not_host_star() {
        let used = UsedNames::of(
            "# Host commented\n\
             Host buildbox \"gate way\" !except\n  HostName 10.20.30.40\n  User deploy\n\
             Host=db-*\nhost  web-?  # web-1, web-2\n\
             Match originalhost jumpy,other exec \"test -x /bin/true\"\n\
             Match host=matched\n\
             Host relay\n  HostName %h.example.com\n\
             Host alias\n  HostName realname\n\
             Host *\n  ForwardAgent yes\nHost ?*\n",
        );
        for name in [
            "buildbox",
            "BuildBox",
            "gate way",
            "except",
            "db-1",
            "web-1",
            "jumpy",
            "other",
            "matched",
            "relay",
            "alias",
            "realname",
            "10.20.30.40",
        ] {
            assert!(used.uses(name), "{name}");
        }
        for name in [
            "web-10",
            "commented",
            "web-1-ssh",
            "forwardagent",
            "test",
            "anything",
        ] {
            assert!(!used.uses(name), "{name}");
        }
    }

    struct TempHome(PathBuf);

    impl TempHome {
        fn new(what: &str) -> TempHome {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir()
                .join(format!("postern-cli-{what}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempHome(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempHome {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn includes_are_followed_but_not_postern_s_own() {
        // A home of its own (the CLI has no tempfile dependency).
        let home = TempHome::new("includes");
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(ssh.join("config.d")).unwrap();
        let ours = home.path().join("postern-ssh_config");
        std::fs::write(&ours, "Host web-1\n").unwrap();
        std::fs::write(
            ssh.join("config"),
            format!(
                "Include config.d/*\nInclude ~/extra \"{}\"\nInclude /nonexistent/*\n",
                ours.display()
            ),
        )
        .unwrap();
        std::fs::write(ssh.join("config.d").join("a.conf"), "Host from-glob\n").unwrap();
        std::fs::write(ssh.join("config.d").join(".hidden"), "Host hidden\n").unwrap();
        std::fs::write(home.path().join("extra"), "Host from-home\nInclude extra\n").unwrap();
        let used = UsedNames::load(home.path(), &ours);
        assert!(used.uses("from-glob") && used.uses("from-home"));
        assert!(!used.uses("hidden"), "glob(3) skips dot files");
        assert!(
            !used.uses("web-1"),
            "Postern's own names are not the user's"
        );
    }

    #[test]
    fn only_a_name_that_does_not_exist_is_free() {
        let nxdomain = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        let down = std::io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert!(no_such_name(&nxdomain));
        assert!(!no_such_name(&down));
        // Every resolver knows localhost.
        let used = resolved(&["localhost".to_string()], Duration::from_secs(10));
        assert!(used.contains("localhost"), "{used:?}");
        // Nothing to look up: nothing waits.
        assert!(resolved(&[], Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn the_include_goes_last_once_and_moves_there_from_the_top() {
        let inc = "Include \"/home/u/.config/postern/ssh_config\"";
        let block = format!("{MARK}\nMatch all\n{inc}\n");
        assert_eq!(with_include_last("", inc), block);
        let user = "Host old\n  User x\n";
        let once = with_include_last(user, inc);
        assert_eq!(once, format!("Host old\n  User x\n\n{block}"));
        assert_eq!(with_include_last(&once, inc), once, "idempotent");
        // Where the first versions put it: at the top, then a blank line.
        let old = format!("{inc}\n\nHost old\n  User x\n");
        assert_eq!(with_include_last(&old, inc), once);
        // Lines added after it by the user stay theirs, above it.
        let later = format!("{once}Host new\n");
        assert_eq!(
            with_include_last(&later, inc),
            format!("Host old\n  User x\n\nHost new\n\n{block}")
        );
    }

    /// `CanonicalizeHostname` makes every plain name possibly the user's:
    /// `ssh db` may mean `db.corp.example` (review 4).
    #[test]
    fn canonicalized_host_names_are_seen() {
        let used =
            UsedNames::of("Host *\n  CanonicalizeHostname yes\n  CanonicalDomains corp.example\n");
        assert!(used.canonicalizes());
        assert!(UsedNames::of("CanonicalizeHostname=always\n").canonicalizes());
        assert!(!UsedNames::of("CanonicalizeHostname no\nHost x\n").canonicalizes());
    }
}
