//! Certificate signing requests as nodes send them (enrollment and rotation):
//! nothing panics, and whatever is signed is a certificate for the node the
//! bastion named, never for a name the CSR asked for.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use postern_bastion::pki::{Pki, node_cert_info, pem_to_der};

fn pki() -> &'static Pki {
    static PKI: OnceLock<std::sync::Arc<Pki>> = OnceLock::new();
    PKI.get_or_init(|| Pki::in_memory(Duration::from_secs(3600)).expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pem_to_der(text);
    let _ = node_cert_info(data);
    if let Ok(issued) = pki().sign_node_csr(text, "node-under-test") {
        let der = pem_to_der(&issued.cert_pem).expect("we wrote it");
        let info = node_cert_info(&der).expect("we wrote it");
        assert_eq!(info.node_id, "node-under-test");
    }
});
