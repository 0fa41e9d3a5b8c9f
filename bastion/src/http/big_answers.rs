//! Answers that may be megabytes (a page of an execution's nodes with their
//! output) are sent under a permit that is held until the client has read the
//! whole body or gone: a limit for the bastion as a whole and one per source
//! address, so neither many readers nor one slow client can hold unbounded
//! memory, and one client cannot take every permit from the rest.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::limits::{PerSource, SourceGuard};

/// Large answers in flight at once, for the bastion and for one source address.
pub const GLOBAL: usize = 8;
pub const PER_SOURCE: usize = 2;
/// Bodies are handed to the connection in slices of this size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct BigAnswers {
    global: Arc<Semaphore>,
    per_source: PerSource,
}

impl Default for BigAnswers {
    fn default() -> Self {
        BigAnswers {
            global: Arc::new(Semaphore::new(GLOBAL)),
            per_source: PerSource::new(PER_SOURCE),
        }
    }
}

/// Held while one large answer is built and sent.
#[derive(Debug)]
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _source: Option<SourceGuard>,
}

impl BigAnswers {
    /// A permit, or 503 with the reason when the bastion or this source has
    /// as many large answers in flight as allowed. A caller whose address is
    /// unknown (not over TCP) counts only against the bastion's limit.
    pub fn acquire(&self, source: Option<IpAddr>) -> Result<Permit, ApiError> {
        let busy = |who: &str| {
            ApiError::Unavailable(format!(
                "{who} too many large answers (executions with their output) in flight; retry in a few seconds"
            ))
        };
        let guard = match source {
            Some(ip) => Some(
                self.per_source
                    .admit(ip)
                    .ok_or_else(|| busy("your address has"))?,
            ),
            None => None,
        };
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("the bastion is sending"))?;
        Ok(Permit {
            _global: global,
            _source: guard,
        })
    }
}

/// A JSON answer whose body keeps `permit` until it has been sent (or the
/// client has gone).
pub fn json_with_permit<T: serde::Serialize>(value: &T, permit: Permit) -> Response {
    let bytes = match serde_json::to_vec(value) {
        Ok(b) => Bytes::from(b),
        Err(e) => return ApiError::Internal(e.to_string()).into_response(),
    };
    let mut chunks = Vec::with_capacity(bytes.len() / CHUNK + 1);
    let mut rest = bytes;
    while rest.len() > CHUNK {
        chunks.push(rest.split_to(CHUNK));
    }
    chunks.push(rest);
    let stream = futures_util::stream::iter(chunks).map(move |c| {
        let _held = &permit;
        Ok::<Bytes, Infallible>(c)
    });
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_hold_per_source_and_overall_and_free_on_drop() {
        let b = BigAnswers::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = b.acquire(Some(a)).unwrap();
        let _p2 = b.acquire(Some(a)).unwrap();
        assert!(b.acquire(Some(a)).is_err(), "per source");
        let mut others: Vec<_> = (2..8u8)
            .map(|i| b.acquire(Some(IpAddr::from([10, 0, 0, i]))).unwrap())
            .collect();
        assert!(
            b.acquire(Some(IpAddr::from([10, 0, 0, 99]))).is_err(),
            "overall"
        );
        drop(p1);
        assert!(b.acquire(Some(IpAddr::from([10, 0, 0, 99]))).is_ok());
        others.clear();
    }
}
