//! A second host for network-fault tests: a network namespace joined to this one
//! by a veth pair on a /30 of its own, whose link the test can cut (no FIN, no
//! RST: packets just stop, as when a cable or a firewall goes) and restore.
//! Needs root (CI runs as root); everything is removed on drop.

use std::path::Path;
use std::process::Command;

/// A namespace `name` with `ns_ip`, reachable from here at `ns_ip` via `host_ip`.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
    host_if: String,
    ns_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` is needed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        let id: u32 = rand::random::<u32>() & 0xff_fff;
        // 10.(96..111).x.(4y)/30: parallel tests do not collide (in practice).
        let (a, b, c) = (96 + (id >> 16) % 16, (id >> 8) & 0xff, (id & 0x3f) * 4);
        let n = Netns {
            name: format!("pstn-{id:05x}"),
            host_ip: format!("10.{a}.{b}.{}", c + 1),
            ns_ip: format!("10.{a}.{b}.{}", c + 2),
            host_if: format!("ph{id:05x}"),
            ns_if: format!("pn{id:05x}"),
        };
        ip(&["netns", "add", &n.name]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if,
        ]);
        ip(&["link", "set", &n.ns_if, "netns", &n.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", n.host_ip),
            "dev",
            &n.host_if,
        ]);
        ip(&["link", "set", &n.host_if, "up"]);
        ip(&[
            "-n",
            &n.name,
            "addr",
            "add",
            &format!("{}/30", n.ns_ip),
            "dev",
            &n.ns_if,
        ]);
        ip(&["-n", &n.name, "link", "set", &n.ns_if, "up"]);
        n
    }

    /// Cuts the link: from now on packets between the two hosts are lost.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]);
    }

    /// Restores the link.
    pub fn restore(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
