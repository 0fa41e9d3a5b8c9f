//! Bounded capture of one output stream: the first and last halves of the kept
//! budget, the total size and a SHA-256 of everything, in constant memory however
//! much the command prints. Errors are usually at the end, so the tail matters.

use std::collections::VecDeque;

use postern_api::cmdexec::Output;
use tokio::io::{AsyncRead, AsyncReadExt};

pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    half: usize,
    total: u64,
    hash: ring::digest::Context,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("total", &self.total)
            .finish()
    }
}

impl Capture {
    pub fn new(keep_bytes: usize) -> Capture {
        let half = keep_bytes.max(2) / 2;
        Capture {
            head: Vec::with_capacity(half.min(64 * 1024)),
            tail: VecDeque::new(),
            half,
            total: 0,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        self.hash.update(data);
        let room = self.half - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.half {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.half..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.half);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    pub fn finish(self) -> Output {
        let kept = self.head.len() as u64 + self.tail.len() as u64;
        let truncated = self.total > kept;
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let data = if truncated {
            format!(
                "{}\n…[{} bytes omitted; {} in all, sha256 below]…\n{}",
                String::from_utf8_lossy(&self.head),
                self.total - kept,
                self.total,
                String::from_utf8_lossy(&tail)
            )
        } else {
            let mut all = self.head;
            all.extend_from_slice(&tail);
            String::from_utf8_lossy(&all).into_owned()
        };
        Output {
            data,
            truncated,
            total_bytes: self.total,
            sha256: hex::encode(self.hash.finish()),
        }
    }
}

/// Reads a stream to its end into a capture, 64 KiB at a time.
pub async fn read_all(mut r: impl AsyncRead + Unpin, mut cap: Capture) -> Capture {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return cap,
            Ok(n) => cap.push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::new(16);
        c.push(b"hello ");
        c.push(b"world");
        let o = c.finish();
        assert_eq!(
            (o.data.as_str(), o.truncated, o.total_bytes),
            ("hello world", false, 11)
        );
        assert_eq!(o.sha256, sha(b"hello world"));
    }

    #[test]
    fn large_output_keeps_head_and_tail() {
        let mut c = Capture::new(8);
        let input: Vec<u8> = (b'a'..=b'z').collect();
        for chunk in input.chunks(3) {
            c.push(chunk);
        }
        let o = c.finish();
        assert!(o.truncated);
        assert_eq!(o.total_bytes, 26);
        assert!(o.data.starts_with("abcd\n"), "{}", o.data);
        assert!(o.data.ends_with("\nwxyz"), "{}", o.data);
        assert!(o.data.contains("18 bytes omitted"));
        assert_eq!(o.sha256, sha(&input));
    }

    #[test]
    fn exact_budget_is_not_truncated() {
        let mut c = Capture::new(4);
        c.push(b"ab");
        c.push(b"cd");
        let o = c.finish();
        assert_eq!((o.data.as_str(), o.truncated), ("abcd", false));
    }

    #[test]
    fn one_huge_write_keeps_its_tail() {
        let mut c = Capture::new(4);
        c.push(b"0123456789");
        let o = c.finish();
        assert!(
            o.data.starts_with("01\n") && o.data.ends_with("\n89"),
            "{}",
            o.data
        );
    }
}
