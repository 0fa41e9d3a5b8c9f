//! A recording's cast as asciicast v2, streamed a few segments at a time with
//! HTTP Range, so serving a 100 MiB recording holds a few hundred KiB and a
//! player seeks without the whole file; a segment that cannot be read is
//! served as a marker line of the same length, and the rest still plays.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use postern_api::ErrorBody;
use serde_json::json;

use super::super::extract::{ApiPath, Caller};
use super::super::{ApiError, AppState};
use super::{SEGMENT_MAX, SEGMENTS_PER_READ, find};

/// `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` against a cast of `len` bytes,
/// as RFC 9110 reads it: `None` to answer the whole cast (no header, several
/// ranges, or one that does not parse: ignored), `Some(Err)` for a range that
/// starts past the end (416), else the first and last byte (the last clamped).
fn range(headers: &HeaderMap, len: i64) -> Option<Result<(i64, i64), ()>> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    // Digits only: no sign, no space inside; too long to be an offset here
    // reads as "to the end".
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    let len_u = len.max(0) as u64;
    let (a, b) = spec.split_once('-')?;
    let (first, last) = if a.is_empty() {
        let n = num(b)?;
        if n == 0 {
            return Some(Err(()));
        }
        (len_u.saturating_sub(n), len_u.saturating_sub(1))
    } else {
        let first = num(a)?;
        let last = if b.is_empty() { u64::MAX } else { num(b)? };
        if last < first {
            return None;
        }
        (first, last.min(len_u.saturating_sub(1)))
    };
    if first >= len_u {
        return Some(Err(()));
    }
    Some(Ok((first as i64, last as i64)))
}

/// Whether a stored segment's metadata is one a writer makes: the segment
/// after the last one served (no hole, no overlap), and no longer than any
/// segment the bastion writes. One that is not ends what is served of the
/// recording there: its offsets cannot be trusted, and its length must not
/// take memory.
pub(super) fn in_order(c: &crate::store::ChunkRow, next: i64) -> bool {
    c.seq == next && (0..=SEGMENT_MAX as i64).contains(&c.raw_len)
}

/// A segment as served: its lines, or (when the stored bytes cannot be read) a
/// marker line of the same length, so offsets hold and the rest still plays.
pub(super) fn segment_bytes(recording: &str, c: &crate::store::ChunkRow) -> Bytes {
    // Checked by the caller: 0 <= raw_len <= SEGMENT_MAX.
    let want = c.raw_len.clamp(0, SEGMENT_MAX as i64) as usize;
    match crate::recording::decompress(c.data.as_deref().unwrap_or_default(), SEGMENT_MAX) {
        Ok(lines) if lines.len() == want => Bytes::from(lines),
        other => {
            tracing::error!(
                recording,
                seq = c.seq,
                ok = other.is_ok(),
                "a recording segment cannot be read; served as a marker"
            );
            let mut m = format!(
                "[{:.6}, \"m\", \"segment {} of this recording cannot be read\"]",
                c.at_ms as f64 / 1000.0,
                c.seq
            )
            .into_bytes();
            m.truncate(want.saturating_sub(1));
            m.resize(want.saturating_sub(1), b' ');
            if want > 0 {
                m.push(b'\n');
            }
            Bytes::from(m)
        }
    }
}

/// The recording as an asciicast v2 file (`asciinema play` plays it as is).
/// `Range: bytes=…` is honoured, so a player can seek without the whole file.
#[utoipa::path(
    get,
    path = "/api/v1/recordings/{id}/cast",
    tag = "recordings",
    params(
        ("id" = String, Path, description = "The recording's id"),
        ("Range" = Option<String>, Header, description = "bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX"),
    ),
    responses(
        (status = 200, description = "The whole cast", content_type = "application/x-asciicast"),
        (status = 206, description = "The range asked for", content_type = "application/x-asciicast"),
        (status = 401, description = "Missing, invalid, expired or revoked credential", body = ErrorBody),
        (status = 404, description = "No such recording visible to the caller", body = ErrorBody),
        (status = 416, description = "The range lies outside the cast", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cast(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let r = find(&state, &caller, &id).await?;
    if r.kind == "jump" {
        return Err(ApiError::NotFound(format!(
            "session {id} went through ssh -J and was not recorded (it is encrypted end to end)"
        )));
    }
    let len = r.cast_bytes;
    let (first, last, status) = match range(&headers, len) {
        None => (0, len - 1, StatusCode::OK),
        Some(Ok((a, b))) => (a, b, StatusCode::PARTIAL_CONTENT),
        Some(Err(())) => {
            let body = json!({ "error": { "code": "range_not_satisfiable", "message": format!("the cast is {len} bytes; ask for a range within it") } });
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                Json(body),
            )
                .into_response());
        }
    };
    let start_seq = if first > 0 {
        state
            .store
            .chunk_at_offset(&r.id, first)
            .await?
            .unwrap_or(0)
    } else {
        0
    };
    let store = state.store.clone();
    let rec = r.id.clone();
    let total = r.chunks;
    // Segments are read a few at a time as the client takes them.
    let stream = futures_util::stream::unfold((start_seq, first), move |(seq, at): (i64, i64)| {
        let store = store.clone();
        let rec = rec.clone();
        async move {
            if seq >= total || at > last {
                return None;
            }
            let rows = match store
                .recording_chunks(&rec, seq, SEGMENTS_PER_READ, true)
                .await
            {
                Ok(rows) if !rows.is_empty() => rows,
                Ok(_) => return None,
                Err(e) => return Some((Err(std::io::Error::other(e)), (total, at))),
            };
            let mut out = Vec::new();
            let mut next = seq;
            let mut pos = at;
            for c in &rows {
                // A row no writer makes (a length past any segment's, a hole
                // or an overlap) ends the answer here: its offsets cannot be
                // trusted, and its length must not take memory.
                if !in_order(c, next) || c.offset > pos {
                    tracing::error!(recording = %rec, seq = c.seq, raw_len = c.raw_len, "a recording segment's metadata is corrupt; the cast ends before it");
                    return Some((
                        Err(std::io::Error::other("corrupt segment")),
                        (total, last + 1),
                    ));
                }
                next = c.seq + 1;
                let seg = segment_bytes(&rec, c);
                let seg_end = c.offset + seg.len() as i64 - 1;
                if seg_end < pos {
                    continue;
                }
                let from = (pos - c.offset).max(0) as usize;
                let to = (last.min(seg_end) - c.offset + 1) as usize;
                out.extend_from_slice(&seg[from..to]);
                pos = c.offset + to as i64;
                if pos > last {
                    break;
                }
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(out)), (next, pos)))
        }
    });
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/x-asciicast")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_LENGTH,
            (last - first + 1).max(0).to_string(),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
    }
    resp.body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, len: i64) -> Option<Result<(i64, i64), ()>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        range(&h, len)
    }

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        assert_eq!(r("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(r("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(r("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(r("bytes=-1000", 100), Some(Ok((0, 99))));
        assert_eq!(r("bytes=0-99999999999999999999", 100), Some(Ok((0, 99))));
        assert_eq!(r("bytes=100-", 100), Some(Err(())));
        assert_eq!(r("bytes=-0", 100), Some(Err(())));
        // Ignored: the whole cast.
        for v in [
            "bytes=5-2",
            "bytes=+3-+5",
            "bytes=--9223372036854775808",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
        ] {
            assert_eq!(r(v, 100), None, "{v}");
        }
    }
}
