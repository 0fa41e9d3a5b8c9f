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
        let mut tail: Vec<u8> = self.tail.into_iter().collect();
        let data = if truncated {
            // Cut on character boundaries, so UTF-8 output stays UTF-8 (and reads as
            // text in the API) after the middle is dropped. Binary output is kept as is.
            let mut head = self.head;
            head.truncate(utf8_head_end(&head));
            let tail = tail.split_off(utf8_tail_start(&tail));
            let omitted = self.total - head.len() as u64 - tail.len() as u64;
            let mut data = head;
            data.extend_from_slice(
                format!(
                    "\n…[{omitted} bytes omitted; {} in all, sha256 below]…\n",
                    self.total
                )
                .as_bytes(),
            );
            data.extend_from_slice(&tail);
            data
        } else {
            let mut all = self.head;
            all.append(&mut tail);
            all
        };
        Output {
            data,
            truncated,
            total_bytes: self.total,
            sha256: hex::encode(self.hash.finish()),
        }
    }
}

/// Where a head cut at the end of `b` should fall: before a character split by
/// the cut. Only for UTF-8 text; anything else is kept whole.
fn utf8_head_end(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        // An incomplete sequence at the very end (error_len None) is the cut.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

/// Where a tail cut at the start of `b` should fall: after continuation bytes of a
/// character whose start was dropped, when what follows is UTF-8 text.
fn utf8_tail_start(b: &[u8]) -> usize {
    let skip = b
        .iter()
        .take(3)
        .take_while(|&&c| c & 0b1100_0000 == 0b1000_0000)
        .count();
    if skip > 0 && std::str::from_utf8(&b[skip..]).is_ok() {
        skip
    } else {
        0
    }
}

/// Reads a stream to its end into a capture, 64 KiB at a time, showing each
/// read to `seen` as it comes (the live output).
pub async fn read_all(
    mut r: impl AsyncRead + Unpin,
    mut cap: Capture,
    mut seen: impl FnMut(&[u8]),
) -> Capture {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return cap,
            Ok(n) => {
                seen(&buf[..n]);
                cap.push(&buf[..n]);
            }
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
            (o.data.as_slice(), o.truncated, o.total_bytes),
            (&b"hello world"[..], false, 11)
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
        let data = String::from_utf8(o.data.clone()).unwrap();
        assert!(o.truncated);
        assert_eq!(o.total_bytes, 26);
        assert!(data.starts_with("abcd\n"), "{data}");
        assert!(data.ends_with("\nwxyz"), "{data}");
        assert!(data.contains("18 bytes omitted"));
        assert_eq!(o.sha256, sha(&input));
    }

    #[test]
    fn exact_budget_is_not_truncated() {
        let mut c = Capture::new(4);
        c.push(b"ab");
        c.push(b"cd");
        let o = c.finish();
        assert_eq!((o.data.as_slice(), o.truncated), (&b"abcd"[..], false));
    }

    #[test]
    fn one_huge_write_keeps_its_tail() {
        let mut c = Capture::new(4);
        c.push(b"0123456789");
        let o = c.finish();
        let data = String::from_utf8(o.data).unwrap();
        assert!(data.starts_with("01\n") && data.ends_with("\n89"), "{data}");
    }

    #[test]
    fn binary_output_is_kept_byte_for_byte() {
        let input: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
        let mut c = Capture::new(1024);
        c.push(&input);
        let o = c.finish();
        assert_eq!(o.data, input);
        assert_eq!(o.sha256, sha(&input));
    }

    #[test]
    fn cuts_keep_utf8_text_utf8() {
        // 'é' is two bytes: a budget of 5 per half cuts inside characters.
        let input = "é".repeat(20);
        let mut c = Capture::new(10);
        c.push(input.as_bytes());
        let o = c.finish();
        let data = String::from_utf8(o.data).expect("still UTF-8 after the cuts");
        assert!(data.starts_with("éé\n") && data.ends_with("\néé"), "{data}");
        assert!(data.contains(&format!("{} in all", input.len())));
    }
}
