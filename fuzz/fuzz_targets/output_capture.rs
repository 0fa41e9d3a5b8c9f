//! The agent's bounded capture of command output, fed any bytes in any chunks:
//! the total and hash cover everything, output that fits is kept byte for byte,
//! UTF-8 text stays UTF-8 after the cuts, and what is kept stays near the budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_agent::exec::capture::Capture;

fuzz_target!(|data: &[u8]| {
    let Some((head, input)) = data.split_at_checked(3) else {
        return;
    };
    let keep = usize::from(u16::from_le_bytes([head[0], head[1]])) % 4096 + 2;
    let chunk = usize::from(head[2]) + 1;
    let mut c = Capture::new(keep);
    for part in input.chunks(chunk) {
        c.push(part);
    }
    let o = c.finish();
    assert_eq!(o.total_bytes, input.len() as u64);
    assert_eq!(o.sha256, hex::encode(ring::digest::digest(&ring::digest::SHA256, input)));
    if !o.truncated {
        assert_eq!(o.data, input);
    } else {
        assert!(o.data.len() <= keep + 200, "kept {} of a {keep} budget", o.data.len());
    }
    if std::str::from_utf8(input).is_ok() {
        assert!(std::str::from_utf8(&o.data).is_ok(), "UTF-8 output lost its encoding");
    }
});
