//! The agent's Debian packages and the install script that fetches one, served
//! read-only and without authentication on the agent port beside enrollment
//! (`GET /agent/v1/install.sh`, `GET /agent/v1/packages/<file>`), so that joining a
//! node is one line: the bastion's `install_command`.
//!
//! Nothing is trusted on first use. The agent port's server key is made afresh at
//! every start and differs between replicas, so a pin on it (`curl
//! --pinnedpubkey`) would break at the next restart; the one line pins the CA
//! instead, carrying its PEM to `curl --cacert`. The script carries the same CA
//! for the package download and each package's sha256, computed here when the
//! package is loaded.
//!
//! Packages are read once at start and held in memory, one copy shared by every
//! download, each at most [`MAX_PACKAGE_BYTES`].

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use postern_api::agent::{INSTALL_SCRIPT_PATH, PACKAGES_PATH};
use thiserror::Error;

/// The largest package served: a real agent package is a few MiB; this only
/// keeps a wrong file (a disk image, say) out of the bastion's memory.
pub const MAX_PACKAGE_BYTES: u64 = 200 * 1024 * 1024;
/// Where the bastion's own package puts the agent package: the default of
/// `--agent-package` for the packaged binary ([`PACKAGED_BINARY`]).
pub const SHIPPED_DIR: &str = "/usr/share/postern-bastion/packages";
/// Where the postern-bastion package installs the bastion.
pub const PACKAGED_BINARY: &str = "/usr/bin/postern-bastion";

const PREFIX: &str = "postern-agent_";
const SUFFIX: &str = ".deb";
const SCRIPT_TEMPLATE: &str = include_str!("install.sh");

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("agent package {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "agent package {path} is {size} bytes, more than the {MAX_PACKAGE_BYTES} bytes (200 MiB) a bastion serves"
    )]
    TooLarge { path: String, size: u64 },
    #[error("agent package {0} is not named postern-agent_<version>_<arch>.deb")]
    BadName(String),
    #[error("two agent packages for {arch}: {first} and {second}; serve one per architecture")]
    SameArch {
        arch: String,
        first: String,
        second: String,
    },
    #[error("no postern-agent_<version>_<arch>.deb in {0}")]
    EmptyDir(String),
    #[error("--agent-public-url {0:?} cannot go into the install script: use https://host:port")]
    UnsafeUrl(String),
}

/// One agent package, as served.
pub struct Package {
    pub file_name: String,
    pub version: String,
    pub arch: String,
    /// Hex sha256 of `bytes`, which the install script checks.
    pub sha256: String,
    pub bytes: Bytes,
}

impl std::fmt::Debug for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Package")
            .field("file_name", &self.file_name)
            .field("sha256", &self.sha256)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Every agent package a bastion serves (one per architecture) and the install
/// script naming them.
pub struct AgentPackages {
    packages: Vec<Package>,
    script: Bytes,
}

impl std::fmt::Debug for AgentPackages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPackages")
            .field("packages", &self.packages)
            .finish_non_exhaustive()
    }
}

impl AgentPackages {
    /// Reads the packages `paths` name (files, or directories holding
    /// `postern-agent_*.deb`) and writes the install script for the bastion at
    /// `controllers` (its `--agent-public-url`, comma-separated when several)
    /// with CA `ca_pem`. `Ok(None)` when `paths` is empty. Blocking: call it off
    /// the runtime.
    pub fn load(
        paths: &[PathBuf],
        controllers: &str,
        ca_pem: &str,
    ) -> Result<Option<AgentPackages>, PackageError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut packages: Vec<Package> = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| PackageError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let files = if meta.is_dir() {
                let found = package_files(path)?;
                if found.is_empty() {
                    return Err(PackageError::EmptyDir(path.display().to_string()));
                }
                found
            } else {
                vec![path.clone()]
            };
            for file in files {
                let p = read_package(&file)?;
                if let Some(other) = packages.iter().find(|o| o.arch == p.arch) {
                    return Err(PackageError::SameArch {
                        arch: p.arch,
                        first: other.file_name.clone(),
                        second: p.file_name,
                    });
                }
                packages.push(p);
            }
        }
        packages.sort_by(|a, b| a.arch.cmp(&b.arch));
        let script = render_script(&packages, controllers, ca_pem)?;
        Ok(Some(AgentPackages {
            packages,
            script: Bytes::from(script),
        }))
    }

    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// The package named `file_name` exactly.
    pub fn by_name(&self, file_name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.file_name == file_name)
    }

    /// The install script (`GET /agent/v1/install.sh`).
    pub fn script(&self) -> &Bytes {
        &self.script
    }
}

/// The one line that installs and joins a node: fetches the install script
/// from the first of `controllers` with the CA `ca_pem` as the only trusted
/// authority, and runs it with the join arguments. POSIX sh (sh, dash, bash,
/// zsh). A failed or refused download stops it with curl's error and a non-zero
/// status, where `curl … | sh` would run an empty script and succeed.
pub fn install_command(ca_pem: &str, controllers: &str, token: &str, ca_hash: &str) -> String {
    let first = controllers.split(',').next().unwrap_or_default();
    let base = first.trim_end_matches('/');
    let mut pem = String::new();
    for line in ca_pem.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let _ = write!(pem, " {}", shell_quote(line));
    }
    format!(
        "s=$(printf '%s\\n'{pem} | curl -fsS --retry 3 --proto '=https' --tlsv1.3 --http1.1 --cacert /dev/stdin --capath /dev/null {url}) \
         && sh -c \"$s\" postern-install --controller {controllers} --token {token} --ca-hash {ca_hash}",
        url = shell_quote(&format!("{base}{INSTALL_SCRIPT_PATH}")),
        controllers = shell_quote(controllers),
        token = shell_quote(token),
        ca_hash = shell_quote(ca_hash),
    )
}

/// `s` as one shell word: as is when it holds only characters no shell (sh,
/// bash, zsh) treats specially, else in single quotes.
fn shell_quote(s: &str) -> String {
    // zsh expands a word starting with `=` to a command's path.
    let plain = !s.is_empty()
        && !s.starts_with('=')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,:/=+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The `postern-agent_*.deb` files in `dir`, by name.
fn package_files(dir: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let read_err = |source| PackageError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `(version, arch)` of a file named `postern-agent_<version>_<arch>.deb`, in
/// the characters Debian allows (which are also safe in a shell word).
fn parse_name(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (version, arch) = rest.split_once('_')?;
    let version_ok = !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c));
    let arch_ok = !arch.is_empty()
        && arch.len() <= 32
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (version_ok && arch_ok).then(|| (version.to_string(), arch.to_string()))
}

fn read_package(path: &Path) -> Result<Package, PackageError> {
    let shown = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (version, arch) = parse_name(&name).ok_or_else(|| PackageError::BadName(shown.clone()))?;
    let read_err = |source| PackageError::Read {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_PACKAGE_BYTES {
        return Err(PackageError::TooLarge { path: shown, size });
    }
    // Bounded again while reading: the file may grow after the size was read.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_PACKAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(PackageError::TooLarge {
            path: shown,
            size: bytes.len() as u64,
        });
    }
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    Ok(Package {
        file_name: name,
        version,
        arch,
        sha256,
        bytes: Bytes::from(bytes),
    })
}

fn render_script(
    packages: &[Package],
    controllers: &str,
    ca_pem: &str,
) -> Result<String, PackageError> {
    // Both go between single quotes in the script.
    let url_ok = !controllers.is_empty()
        && controllers
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:/,[]".contains(c));
    if !url_ok {
        return Err(PackageError::UnsafeUrl(controllers.to_string()));
    }
    let pem: String = ca_pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let mut cases = String::new();
    for p in packages {
        // Names and hashes are checked to hold only shell-safe characters.
        let _ = writeln!(
            cases,
            "    {}) echo '{} {}' ;;",
            p.arch, p.file_name, p.sha256
        );
    }
    let arches = packages
        .iter()
        .map(|p| p.arch.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(SCRIPT_TEMPLATE
        .replace("@CONTROLLERS@", controllers)
        .replace("@CA_PEM@", &pem)
        .replace("@PACKAGES@\n", &cases)
        .replace("@PACKAGES_PATH@", PACKAGES_PATH)
        .replace("@ARCHES@", &arches))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn package_names_are_debian_names_and_nothing_else() {
        assert_eq!(
            parse_name("postern-agent_0.1.0_amd64.deb"),
            Some(("0.1.0".into(), "amd64".into()))
        );
        assert_eq!(
            parse_name("postern-agent_1.2.3+git~1-2_arm64.deb"),
            Some(("1.2.3+git~1-2".into(), "arm64".into()))
        );
        for bad in [
            "postern-agent_0.1.0.deb",
            "postern-agent__amd64.deb",
            "postern-agent_0.1.0_.deb",
            "postern-agent_0.1.0_amd64_x.deb",
            "postern-agent_0.1'0_amd64.deb",
            "postern-agent_0.1.0_AMD64.deb",
            "postern-agent_x1_amd64.deb",
            "postern-bastion_0.1.0_amd64.deb",
            "postern-agent_0.1.0_amd64.tar",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_directory_yields_one_package_per_arch_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postern-agent_0.1.0_amd64.deb"), b"abc").unwrap();
        std::fs::write(dir.path().join("README"), b"not a package").unwrap();
        let p = AgentPackages::load(
            &[dir.path().to_path_buf()],
            "https://b.example:8443",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.packages().len(), 1);
        let pkg = p.by_name("postern-agent_0.1.0_amd64.deb").unwrap();
        assert_eq!(
            pkg.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let script = String::from_utf8(p.script().to_vec()).unwrap();
        assert!(script.contains(&format!(
            "amd64) echo 'postern-agent_0.1.0_amd64.deb {}' ;;",
            pkg.sha256
        )));
        assert!(script.contains("CONTROLLERS='https://b.example:8443'"));
        assert!(script.contains("CA_PEM='-----BEGIN CERTIFICATE-----\nAAAA\n-----END"));
        for placeholder in ["@CONTROLLERS@", "@CA_PEM@", "@PACKAGES", "@ARCHES@"] {
            assert!(
                !script.contains(placeholder),
                "{placeholder} left:\n{script}"
            );
        }

        // A second one for the same architecture is ambiguous.
        std::fs::write(dir.path().join("postern-agent_0.2.0_amd64.deb"), b"x").unwrap();
        let e = AgentPackages::load(&[dir.path().to_path_buf()], "https://b:1", "").unwrap_err();
        assert!(matches!(e, PackageError::SameArch { .. }), "{e}");
        // An empty directory given on purpose is a mistake, not "no packages".
        let empty = tempfile::tempdir().unwrap();
        let e = AgentPackages::load(&[empty.path().to_path_buf()], "https://b:1", "").unwrap_err();
        assert!(matches!(e, PackageError::EmptyDir(_)), "{e}");
        assert!(
            AgentPackages::load(&[], "https://b:1", "")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_oversized_or_misnamed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("postern-agent_0.1.0_amd64.deb");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_PACKAGE_BYTES + 1).unwrap();
        let e = AgentPackages::load(&[big], "https://b:1", "").unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
        let odd = dir.path().join("agent.deb");
        std::fs::write(&odd, b"x").unwrap();
        let e = AgentPackages::load(&[odd], "https://b:1", "").unwrap_err();
        assert!(matches!(e, PackageError::BadName(_)), "{e}");
    }

    #[test]
    fn a_url_that_would_break_out_of_the_script_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("postern-agent_0.1.0_amd64.deb");
        std::fs::write(&f, b"x").unwrap();
        let e = AgentPackages::load(&[f], "https://b:1/'$(id)'", "").unwrap_err();
        assert!(matches!(e, PackageError::UnsafeUrl(_)), "{e}");
    }

    #[test]
    fn the_install_command_quotes_what_a_shell_would_read() {
        let cmd = install_command(
            "-----BEGIN CERTIFICATE-----\nAB+/=\n-----END CERTIFICATE-----\n",
            "https://a:8443,https://b:8443",
            "pet_x_y",
            "sha256:00",
        );
        assert_eq!(
            cmd,
            "s=$(printf '%s\\n' '-----BEGIN CERTIFICATE-----' AB+/= '-----END CERTIFICATE-----' \
             | curl -fsS --retry 3 --proto '=https' --tlsv1.3 --http1.1 --cacert /dev/stdin \
             --capath /dev/null https://a:8443/agent/v1/install.sh) && sh -c \"$s\" postern-install \
             --controller https://a:8443,https://b:8443 --token pet_x_y --ca-hash sha256:00"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("=https"), "'=https'");
    }
}
