//! A real OpenID provider for the tests: npm's oidc-provider around
//! tests/oidc-provider/server.mjs (installed by scripts/oidc-provider), and a
//! person at its login form: curl with a cookie jar, following redirects as
//! a browser does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// Where `node server.mjs` runs (`POSTERN_OIDC_PROVIDER_DIR`, set by
/// scripts/test, else installed now).
pub fn provider_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("POSTERN_OIDC_PROVIDER_DIR") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let out = Command::new(root.join("scripts/oidc-provider"))
        .output()
        .expect("scripts/oidc-provider");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running provider; stopped when dropped.
pub struct Provider {
    child: Child,
    pub issuer: String,
    pub port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A provider on `port` with one client (`postern` / `s3cr3t`) that may
/// redirect to `redirect_uris`, the `users`, and `keys` (a private JWKS, see
/// [`key`]).
pub fn start(
    work: &Path,
    port: u16,
    redirect_uris: &[&str],
    users: Value,
    keys: Value,
) -> Provider {
    let issuer = format!("http://127.0.0.1:{port}");
    let config = work.join(format!("provider-{port}-{}.json", rand::random::<u32>()));
    std::fs::write(
        &config,
        json!({
            "issuer": issuer,
            "clients": [{"client_id": "postern", "client_secret": "s3cr3t", "redirect_uris": redirect_uris}],
            "users": users,
            "keys": keys,
        })
        .to_string(),
    )
    .expect("provider config");
    let dir = provider_dir();
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg(&config)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the provider's first line");
    assert!(line.starts_with("READY "), "the provider said {line:?}");
    Provider {
        child,
        issuer,
        port,
    }
}

/// A new private signing key (RS256) as a JWKS.
pub fn key(kid: &str) -> Value {
    let out = Command::new("node")
        .arg(provider_dir().join("server.mjs"))
        .args(["--gen-key", kid])
        .output()
        .expect("node --gen-key");
    serde_json::from_slice(&out.stdout).expect("a JWKS")
}

/// A browser's cookie jar and curl.
pub struct Browser {
    jar: PathBuf,
}

impl Browser {
    pub fn new(work: &Path) -> Browser {
        Browser {
            jar: work.join(format!("jar-{}", rand::random::<u32>())),
        }
    }

    fn curl(&self, args: &[&str]) -> String {
        let jar = self.jar.to_str().unwrap_or_default();
        let out = Command::new("curl")
            .args(["-s", "-m", "20", "-c", jar, "-b", jar])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Opens `url` and signs in at the provider's form as `user`; follows
    /// the redirects after the form (`follow`) or stops at the first one.
    /// Answers the last status and URL, or the provider's refusal.
    pub fn sign_in(
        &self,
        url: &str,
        user: &str,
        password: &str,
        follow: bool,
    ) -> Result<(String, String), String> {
        let form = self.curl(&["-L", "-o", "/dev/null", "-w", "%{url_effective}", url]);
        let answer = self.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--data-urlencode",
            &format!("username={user}"),
            "--data-urlencode",
            &format!("password={password}"),
            &format!("{form}/login"),
        ]);
        let (code, resume) = answer.split_once(' ').unwrap_or(("", ""));
        if code != "303" {
            return Err(format!("the provider answered {code} at {form}/login"));
        }
        let mut args = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{url_effective} %{redirect_url}",
        ];
        if follow {
            args.insert(0, "-L");
        }
        args.push(resume);
        let out = self.curl(&args);
        let mut parts = out.splitn(3, ' ');
        let status = parts.next().unwrap_or_default().to_string();
        let effective = parts.next().unwrap_or_default().to_string();
        let redirect = parts.next().unwrap_or_default().to_string();
        Ok((status, if follow { effective } else { redirect }))
    }

    /// A headless sign-in's page at `url` (the bastion's): types `code`,
    /// reads the confirmation (answered too), and continues; answers where
    /// the bastion sends the browser (the provider).
    pub fn approve_device(&self, url: &str, code: &str) -> Result<(String, String), String> {
        let page = self.curl(&[url]);
        let csrf = field(&page, "csrf").ok_or_else(|| format!("no csrf field in {page}"))?;
        let form = |to: &str, extra: &[&str]| {
            let mut args = vec![
                "--data-urlencode".to_string(),
                format!("code={code}"),
                "--data-urlencode".to_string(),
                format!("csrf={csrf}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push(format!("{url}/{to}"));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            self.curl(&refs)
        };
        let confirm = form("confirm", &[]);
        if !confirm.contains("Approve this sign-in?") {
            return Err(confirm);
        }
        let to = form(
            "approve",
            &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
        );
        match to.split_once(' ') {
            Some(("303", provider)) => Ok((confirm, provider.to_string())),
            _ => Err(to),
        }
    }

    /// Posts the device form without this browser's cookie (as a page on
    /// another site would make a visitor's browser do): answers the status.
    pub fn post_without_cookie(url: &str, code: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "--data-urlencode",
                &format!("code={code}"),
                "--data-urlencode",
                "csrf=0",
            ])
            .arg(format!("{url}/approve"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Opens `url`, following redirects; answers the status and body.
    pub fn open(&self, url: &str) -> (String, String) {
        let out = self.curl(&["-L", "-w", "\n%{http_code}", url]);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", ""));
        (status.to_string(), body.to_string())
    }
}

/// The value of the hidden form field `name` in an HTML page.
fn field(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &page[at + name.len() + 15..];
    rest.split('"').next().map(str::to_string)
}

/// A query parameter of `url`, decoded.
pub fn query(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}
